"""The image model on each runtime, on the dev sources: top-1 of the shipped settings with eager PyTorch, ONNX
Runtime fp32 and ONNX Runtime int8, and the largest logit difference from eager PyTorch on the demo photos.

int8 is calibrated leave-one-source-out: for each source, on up to 128 images of the other sources, never on the
images it is scored on. python -m benchmarks.runtimes [--devsets devsets]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.conse_search import Candidate, set_scores, top1_by_source
from benchmarks.devdata import load_devsets
from pipelines.samples import DEMO_PHOTOS, sample_photo
from transforms.backends import image_runtime
from transforms.backends.local import ConSEEmbedder, LocalBackend
from transforms.decode import decode_image

CALIBRATION_IMAGES = 128


def demo_pixels() -> np.ndarray:
    images = []
    for name in DEMO_PHOTOS:
        buffer = io.BytesIO()
        sample_photo(name).save(buffer, "JPEG", quality=92)
        images.append(decode_image(buffer.getvalue(), Image.MAX_IMAGE_PIXELS)[0])
    return np.stack([image_runtime.preprocess(image) for image in images])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    args = parser.parse_args(argv)
    devsets = Path(args.devsets)
    pixels = demo_pixels()
    eager = ConSEEmbedder(LocalBackend(runtime="torch")).classifier.logits(pixels)
    onnx = ConSEEmbedder(LocalBackend(runtime="onnx")).classifier.logits(pixels)
    print(f"largest |logit| difference, ONNX fp32 vs eager PyTorch, on the {len(pixels)} demo photos: "
          f"{np.abs(onnx - eager).max():.2e} (logits up to {np.abs(eager).max():.1f}); same top class on "
          f"{(onnx.argmax(1) == eager.argmax(1)).sum()} of {len(pixels)}\n")

    table = {}
    for runtime in ("torch", "onnx"):
        sets = load_devsets(devsets, LocalBackend(runtime=runtime))
        table[runtime] = top1_by_source(set_scores(Candidate(LocalBackend(), "photo"), sets), sets)
    sources = list(table["onnx"])
    table["onnx-int8"] = {}
    reference = load_devsets(devsets, LocalBackend(runtime="onnx"))
    for source in sources:
        others = [f"{devsets}/{file}" for dev in reference if dev.source != source for file in dev.files]
        chosen = [others[i] for i in np.random.default_rng(0).permutation(len(others))[:CALIBRATION_IMAGES]]
        with tempfile.TemporaryDirectory() as folder:
            for i, path in enumerate(chosen):  # one folder, so a single glob names exactly these images
                Path(folder, f"{i:04d}{Path(path).suffix}").write_bytes(Path(path).read_bytes())
            backend = LocalBackend(runtime="onnx-int8", int8_calibration=f"{folder}/*")
            sets = [dev for dev in load_devsets(devsets, backend) if dev.source == source]
            table["onnx-int8"][source] = top1_by_source(set_scores(Candidate(LocalBackend(), "photo"), sets),
                                                        sets)[source]
    print("| runtime | " + " | ".join(sources) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for runtime, by_source in table.items():
        values = [by_source[s] for s in sources]
        print(f"| {runtime} | " + " | ".join(f"{v:.1%}" for v in values) + f" | {np.mean(values):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
