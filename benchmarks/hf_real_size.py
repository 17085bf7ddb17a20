"""`make bench`, the hf backend at real size: CLIP ViT-B/32 and SigLIP B/16 shapes, built from their published configs
with random weights (speed and memory do not depend on the values) and a byte-level tokenizer trained on the label
texts, saved as users save them (`Processor.save_pretrained`).

For each model, in this one run: the bare loop a user would write (decode, the model's own processor,
`get_image_features`, batch 16, eager PyTorch) against the whole job on the same images on each --hf_runtime
(images/s from process start to exit, and its peak RSS); then the label side: relabel of the job's kept vectors
with growing prompt sets (labels x templates), its peak RSS, which must stay flat as the prompts grow.

    python -m benchmarks.hf_real_size [--images 300] [--models clip-vit-b32 siglip-b16]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from testbed.images import make_images

REPO = Path(__file__).resolve().parents[1]
BATCH = 16
RUNTIMES = ("auto", "torch", "onnx-int8")  # auto: ONNX Runtime on this CPU
# The job's own peak RSS (VmHWM), printed by the process itself.
PEAK = ("import re, sys; from pipelines.__main__ import JOBS; import importlib; "
        "status = importlib.import_module(f'pipelines.{JOBS[sys.argv[1]][0]}').main(sys.argv[2:]); "
        "print('peak', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024, status)")


def _tokenizer(texts: list[str], max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{specials[0]} $A {specials[1]}", special_tokens=[(specials[0], 0), (specials[1], 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[2], unk_token=specials[3], model_max_length=max_length)


def build(kind: str, folder: Path) -> Path:
    """The model of `kind` saved in `folder` (kept between runs)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    from transforms.label_sets import load_label_set, load_templates

    texts = [template.format(label) for label in load_label_set("imagenet") for template in load_templates("simple")]
    torch.manual_seed(0)
    if kind == "clip-vit-b32":  # openai/clip-vit-base-patch32: CLIPConfig's defaults are its shapes
        model, tokenizer = CLIPModel(CLIPConfig()), _tokenizer(texts, 77)
        processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    else:  # google/siglip2-base-patch16-224 (a SigLIP architecture with Gemma's 256k vocabulary)
        config = SiglipConfig(text_config=dict(vocab_size=256_000, max_position_embeddings=64),
                              vision_config=dict(image_size=224, patch_size=16))
        model, tokenizer = SiglipModel(config), _tokenizer(texts, 64)
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 224, "width": 224}),
                                    tokenizer=tokenizer)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def bare_loop(folder: Path, images: Path) -> float:
    """Images/s of the loop a user would write: decode, the model's processor, get_image_features, batch 16."""
    code = f"""
import sys, time, torch
from pathlib import Path
from PIL import Image
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
paths = sorted(Path(sys.argv[2]).glob("*.jpg"))
start = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(paths), {BATCH}):
        batch = [Image.open(p).convert("RGB") for p in paths[i:i + {BATCH}]]
        model.get_image_features(**processor(images=batch, return_tensors="pt"))
print(len(paths) / (time.perf_counter() - start))
"""
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(images)], capture_output=True, text=True,
                          check=True)
    return float(done.stdout.split()[-1])


def job(name: str, *argv: str) -> tuple[float, int]:
    """(seconds from process start to exit, peak RSS in MB) of one job, in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, name, *argv], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    found = re.search(r"^peak (\d+) (\d+)$", done.stdout, re.M)
    if not found or found[2] != "0":
        raise RuntimeError(f"{name} failed: {done.stderr[-3000:]}")
    return seconds, int(found[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["clip-vit-b32", "siglip-b16"])
    parser.add_argument("--workdir", default=str(REPO / "bench-output" / "hf-real-size"))
    parser.add_argument("--no_labels", action="store_true", help="only the image side")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    images = make_images(work / f"images-{args.images}", args.images)
    warm_up = make_images(work / "images-warm-up", 4, seed=1)
    speed, labels = [], []
    for kind in args.models:
        folder = build(kind, work / "models" / kind)
        loop = bare_loop(folder, images)
        out = work / "runs" / kind
        for runtime in RUNTIMES:
            # A machine's first job exports the tower's graph: a job on a few images does, so the timed one is warm.
            job("classify", "--backend", "hf", "--hf_model", str(folder), "--hf_runtime", runtime, "--input",
                f"{warm_up}/*.jpg", "--labels", "everyday", "--output", str(work / "runs" / "warm-up"), "--overwrite")
            seconds, peak = job("classify", "--backend", "hf", "--hf_model", str(folder), "--hf_runtime", runtime,
                                "--input", f"{images}/*.jpg", "--labels", "everyday", "--output",
                                str(out if runtime == "auto" else work / "runs" / f"{kind}-{runtime}"), "--overwrite",
                                "--keep_embeddings")
            speed.append((kind, runtime, loop, args.images / seconds, peak))
        for label_set, templates in () if args.no_labels else (("cifar100", "simple"), ("imagenet", "plain"),
                                                                 ("imagenet", "simple")):
            prompts = {"cifar100": 100, "imagenet": 1000}[label_set] * {"plain": 1, "simple": 7}[templates]
            seconds, peak = job("relabel", "--backend", "hf", "--hf_model", str(folder), "--embeddings", str(out),
                                "--labels", label_set, "--templates", templates, "--output",
                                str(work / "runs" / f"{kind}-{label_set}-{templates}"), "--overwrite")
            labels.append((kind, prompts, seconds, peak))
    print(f"\n{datetime.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}: {args.images} distinct JPEGs (benchmarks.run.make_images), batch {BATCH}, "
          "CPU, float32, random weights at the published shapes\n")
    print("| model | --hf_runtime | bare eager loop (images/s) | the job (images/s, start to exit) | job / loop | "
          "job peak RSS (MB) |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for kind, runtime, loop, rate, peak in speed:
        print(f"| {kind} | {runtime} | {loop:.1f} | {rate:.1f} | {rate / loop:.2f} | {peak:,} |")
    print("\n| model | label prompts | relabel (s) | relabel peak RSS (MB) |\n| --- | ---: | ---: | ---: |")
    for kind, prompts, seconds, peak in labels:
        print(f"| {kind} | {prompts:,} | {seconds:.0f} | {peak:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
