"""The `hf` backend on tiny CLIP, SigLIP and SigLIP 2 models that the tests build and save every way users save them
(no hub here): the command line labels photos with them, keeps the vectors transformers itself computes, relabels
and searches them; SigLIP's probabilities are its own sigmoids; a split image + sentence-transformers text tower
works; bad models stop the job before it starts."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import classify_images, relabel, search
from tests.tiny_models import SAVED_AS, SIDE, tiny_clip, tiny_siglip, tiny_siglip2_naflex, tiny_split_towers
from transforms.backends import l2_normalize
from transforms.backends.hf import HFBackend
from transforms.decode import decode_image
from transforms.run_folder import SUCCESS, read_run

LABELS = ["a cat", "a cup of coffee", "a rocket in space", "a flower"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    image, text = tiny_split_towers(folder / "split")
    return {"clip": tiny_clip(folder / "clip"), "siglip": tiny_siglip(folder / "siglip"), "image": image,
            "text": text}


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory, photos):
    """The sample photos at the tiny models' own size, as PNG: what the processor gets is what the file holds."""
    folder = tmp_path_factory.mktemp("small")
    for path in photos.iterdir():
        Image.open(path).convert("RGB").resize((SIDE, SIDE)).save(folder / f"{path.stem}.png")
    return folder


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


def _classify(model_flags, inputs, labels, out, *flags):
    return classify_images.main(["--backend", "hf", *model_flags, "--input", f"{inputs}/*.png", "--labels",
                                 str(labels), "--templates", "plain", "--output", str(out), *flags])


def _by_name(rows):
    return {row["uri"].rsplit("/", 1)[-1]: row for row in rows}


def test_a_clip_folder_labels_keeps_transformers_own_vectors_and_relabels(models, small_photos, labels_file, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    out = tmp_path / "out"
    assert _classify(["--hf_model", str(models["clip"])], small_photos, labels_file, out, "--keep_embeddings",
                     "--top_k", "4") == 0
    kept = _by_name(read_run(str(out), "embeddings"))
    assert len(kept) == 7 and {row["model"] for row in kept.values()} == {HFBackend(model=str(models["clip"])).model_id}
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    processor = AutoImageProcessor.from_pretrained(models["clip"])
    for name, row in kept.items():
        pixels = processor(images=[Image.open(small_photos / name).convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            own = model.get_image_features(**pixels).pooler_output.numpy()
        assert np.abs(np.asarray(row["embedding"]) - l2_normalize(own)[0]).max() <= 1e-4, name
    # The rows rank those vectors against the labels embedded by the model's own text tower (template `plain`).
    tokens = AutoTokenizer.from_pretrained(models["clip"])(LABELS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        label_vectors = l2_normalize(model.get_text_features(**tokens).pooler_output.numpy())
    for name, row in _by_name(read_run(str(out))).items():
        cosines = dict(zip(LABELS, label_vectors @ np.asarray(kept[name]["embedding"])))
        assert row["scores"] == pytest.approx([cosines[label] for label in row["labels"]], abs=1e-5)
        logits = model.logit_scale.exp().item() * np.array([cosines[label] for label in LABELS])
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert row["probs"] == pytest.approx([expected[LABELS.index(label)] for label in row["labels"]], abs=1e-5)
    # Relabel with another set gives what a fresh classify gives, and search finds images by text.
    others = tmp_path / "others.txt"
    others.write_text("a dog\na red car\nan astronaut\n")
    assert relabel.main(["--backend", "hf", "--hf_model", str(models["clip"]), "--embeddings", str(out),
                         "--labels", str(others), "--templates", "plain", "--output", str(tmp_path / "relabeled"),
                         "--top_k", "3"]) == 0
    assert _classify(["--hf_model", str(models["clip"])], small_photos, others, tmp_path / "fresh", "--top_k", "3") == 0
    relabeled, fresh = _by_name(read_run(str(tmp_path / "relabeled"))), _by_name(read_run(str(tmp_path / "fresh")))
    for name, row in fresh.items():
        assert relabeled[name]["labels"] == row["labels"]
        assert relabeled[name]["probs"] == pytest.approx(row["probs"], abs=1e-5)
    assert search.main(["--backend", "hf", "--hf_model", str(models["clip"]), "--embeddings", str(out),
                        "--query", "a cat", "--images_per_query", "2", "--output", str(tmp_path / "found")]) == 0
    assert len(read_run(str(tmp_path / "found"))) == 2


def test_siglip_probabilities_are_its_own_sigmoids(models, small_photos, labels_file, tmp_path):
    out = tmp_path / "out"
    assert _classify(["--hf_model", str(models["siglip"])], small_photos, labels_file, out, "--top_k", "4") == 0
    backend = HFBackend(model=str(models["siglip"]))
    embedder = backend.load()
    assert (embedder.logit_scale, embedder.logit_bias) == (pytest.approx(np.exp(2.0)), pytest.approx(-1.5))
    label_vectors = embedder.embed_texts(LABELS)
    for name, row in _by_name(read_run(str(out))).items():
        image = embedder.embed_images([Image.open(small_photos / name).convert("RGB")])[0]
        cosines = dict(zip(LABELS, label_vectors @ image))
        expected = [1 / (1 + np.exp(-(np.exp(2.0) * cosines[label] - 1.5))) for label in row["labels"]]
        assert row["probs"] == pytest.approx(expected, abs=1e-5)
        assert row["scores"] == pytest.approx([cosines[label] for label in row["labels"]], abs=1e-5)


def test_a_split_image_and_sentence_transformers_text_tower(models, small_photos, labels_file, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "out"
    assert _classify(["--hf_model", str(models["image"]), "--hf_text_model", str(models["text"])], small_photos,
                     labels_file, out, "--top_k", "4", "--keep_embeddings") == 0
    text_vectors = l2_normalize(SentenceTransformer(str(models["text"]), device="cpu").encode(LABELS))
    kept = _by_name(read_run(str(out), "embeddings"))
    for name, row in _by_name(read_run(str(out))).items():
        cosines = dict(zip(LABELS, text_vectors @ np.asarray(kept[name]["embedding"])))
        assert row["scores"] == pytest.approx([cosines[label] for label in row["labels"]], abs=1e-5)


@pytest.mark.parametrize("flags, says", [
    (["--hf_model", "{clip}", "--hf_device", "cuda"], "--hf_device cuda, but torch sees no CUDA device here"),
    (["--hf_model", "openai/clip-vit-base-patch32"], "cannot get 'openai/clip-vit-base-patch32' from the Hugging "
                                                     "Face hub or its local cache"),
    (["--hf_model", "{labels}"], "is not a folder"),
    (["--hf_model", "{empty}"], "is not a transformers model (no readable config.json"),
    (["--hf_model", "{image}"], "is an image model only (clip_vision_model): give its text tower with --hf_text_model"),
    (["--hf_model", "{text}"], "is a text model only (bert): --hf_model takes an image-text model, or an image model "
                               "with --hf_text_model"),
    (["--hf_model", "{untokenized}"], "untokenized' has no tokenizer transformers can load: no tokenizer.json ("),
    ([], "--backend hf needs --hf_model"),
])
def test_a_model_that_cannot_run_stops_the_job_before_it_starts(models, labels_file, small_photos, tmp_path, capsys,
                                                                flags, says):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "empty").mkdir()
    shutil.copytree(models["clip"], tmp_path / "untokenized")
    (tmp_path / "untokenized" / "tokenizer.json").unlink()
    paths = {"clip": models["clip"], "image": models["image"], "text": models["text"], "labels": labels_file,
             "empty": tmp_path / "empty", "untokenized": tmp_path / "untokenized"}
    flags = [flag.format(**paths) for flag in flags]
    assert _classify(flags, small_photos, labels_file, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: backend 'hf' cannot run: ") and says in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_other_weights_are_another_model_and_their_vectors_are_refused(models, small_photos, labels_file, tmp_path,
                                                                       capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    assert _classify(["--hf_model", str(models["clip"])], small_photos, labels_file, out, "--keep_embeddings") == 0
    retrained = tmp_path / "retrained"
    shutil.copytree(models["clip"], retrained)
    weights = load_file(retrained / "model.safetensors")
    weights["logit_scale"] = weights["logit_scale"] + 0.5
    save_file(weights, retrained / "model.safetensors", metadata={"format": "pt"})
    assert relabel.main(["--backend", "hf", "--hf_model", str(retrained), "--embeddings", str(out), "--labels",
                         str(labels_file), "--output", str(tmp_path / "relabeled")]) == 2
    assert "were made by model 'hf:" in capsys.readouterr().err


def test_the_decoder_keeps_the_side_a_384_px_model_reads():
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1000), (10, 120, 200)).save(buffer, "JPEG")
    default, _, _ = decode_image(buffer.getvalue(), 10**9)
    large, _, _ = decode_image(buffer.getvalue(), 10**9, model_side=384)
    assert min(default.size) == 256 and min(large.size) == 384 and max(large.size) == 768


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_a_model_saved_any_way_transformers_saves_one_labels_the_same(saved_as, models, small_photos, labels_file,
                                                                       tmp_path):
    """Processor.save_pretrained writes processor_config.json (transformers 5), the image processor alone
    preprocessor_config.json: the backend asks transformers for the processor, so each folder gives the same rows as
    the one the other tests use."""
    folder = tiny_clip(tmp_path / "model", saved_as)
    assert HFBackend(model=str(folder)).image_side == SIDE
    assert _classify(["--hf_model", str(folder)], small_photos, labels_file, tmp_path / "out") == 0
    assert _classify(["--hf_model", str(models["clip"])], small_photos, labels_file, tmp_path / "reference") == 0
    ours, reference = _by_name(read_run(str(tmp_path / "out"))), _by_name(read_run(str(tmp_path / "reference")))
    assert {name: row["scores"] for name, row in ours.items()} == {name: row["scores"] for name, row in
                                                                   reference.items()}


def test_siglip2_naflex_reads_each_image_at_its_own_aspect(small_photos, labels_file, tmp_path, photos):
    """NaFlex processors keep an image's aspect and read up to max_num_patches patches: the decoder keeps the side
    of that many square patches, and images of other shapes share a batch."""
    folder = tiny_siglip2_naflex(tmp_path / "naflex")
    assert HFBackend(model=str(folder)).image_side == 4 * 8  # 16 patches of 8 pixels: 4 x 4 of them
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for index, path in enumerate(sorted(small_photos.glob("*.png"))):
        Image.open(path).resize((SIDE * (1 + index % 3), SIDE)).save(mixed / path.name)
    assert _classify(["--hf_model", str(folder)], mixed, labels_file, tmp_path / "out", "--max_error_fraction",
                     "0") == 0
    rows = read_run(str(tmp_path / "out"))
    assert len(rows) == 7 and all(0 <= prob <= 1 for row in rows for prob in row["probs"])  # sigmoids


def _counting_calls(cls, name, folder):
    """Wraps cls.name so that every call, in whichever process or thread, adds a line to folder/name."""
    method = getattr(cls, name)

    def count(*args, **kwargs):
        with open(folder / name, "a") as f:
            f.write("call\n")
        return method(*args, **kwargs)
    return count


def _calls(folder, name):
    return len((folder / name).read_text().split()) if (folder / name).exists() else 0


def test_a_model_shared_by_a_machines_processes_embeds_the_images_each_process_prepared(
        models, small_photos, labels_file, tmp_path, monkeypatch):
    """--hf_share_model on (the default on GPUs): one copy of the model per machine, which the worker processes call
    through Beam's proxy (share_model_across_processes); each process runs the processor on its own images before
    they are batched, so the model only embeds ready arrays. The rows are those of a model in the worker's process."""
    from transforms.backends import hf

    for shared in ("on", "off"):
        calls = tmp_path / f"calls-{shared}"
        calls.mkdir()
        for cls, name in ((hf.HFBackend, "image_inputs"), (hf.HFEmbedder, "embed_inputs"),
                          (hf.HFEmbedder, "embed_images")):
            monkeypatch.setattr(cls, name, _counting_calls(cls, name, calls))
        assert _classify(["--hf_model", str(models["clip"]), "--hf_share_model", shared], small_photos, labels_file,
                         tmp_path / shared, "--top_k", "4") == 0
        monkeypatch.undo()
        assert _calls(calls, "image_inputs") >= 7 and _calls(calls, "embed_inputs") >= 1
        assert _calls(calls, "embed_images") == 0  # the model never got decoded images to prepare itself
    shared, alone = _by_name(read_run(str(tmp_path / "on"))), _by_name(read_run(str(tmp_path / "off")))
    assert len(shared) == 7
    for name, row in alone.items():
        assert shared[name]["labels"] == row["labels"] and shared[name]["probs"] == pytest.approx(row["probs"])


def test_the_copy_that_embedded_the_labels_is_not_kept_beside_a_shared_model(models, monkeypatch):
    """Where one copy of the model per machine embeds the images (a GPU's memory holds one), the process that
    embedded the label set drops its own copy; otherwise labels and images share the process's copy."""
    from transforms.rank import build_label_matrix

    loads = []
    real_load = HFBackend._load
    monkeypatch.setattr(HFBackend, "_load", lambda self: loads.append(self.share_model) or real_load(self))
    for share, copies in (("on", 2), ("off", 1)):
        backend = HFBackend(model=str(models["clip"]), share_model=share)
        backend.unload()  # another test's job may have left this process a copy
        labels = build_label_matrix({label: [label] for label in LABELS}, ["{}"], backend)
        assert labels.vectors.shape == (4, backend.embedding_dim)
        backend.load()  # what this process's image batches would use when the model is not shared
        assert loads.count(share) == copies


def test_a_preprocessor_that_fails_on_a_decoded_image_stops_the_job(models, small_photos, labels_file, tmp_path,
                                                                    monkeypatch, capsys):
    """The decoder hands the processor valid RGB images only, so a processor that fails on one is the model's fault
    and would fail on every image: the job ends with one line and no rows, never with an error row per image."""
    from transforms.backends import hf

    def refuse(self, image):
        raise ValueError("Unsupported number of image dimensions: 2")

    monkeypatch.setattr(hf.HFBackend, "image_inputs", refuse)
    out = tmp_path / "out"
    assert _classify(["--hf_model", str(models["clip"]), "--hf_runtime", "torch"], small_photos, labels_file,
                     out) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the job failed: ValueError: Unsupported number of image dimensions: 2 (the "
                           "model's preprocessor, on "), last
    assert not (out / SUCCESS).exists()


def test_a_half_precision_model_is_handed_half_precision_pixels(models, small_photos):
    """Half the bytes to move to a shared model and to the device; bfloat16 keeps less of them than float16."""
    image = Image.open(next(small_photos.glob("*.png"))).convert("RGB")
    full = HFBackend(model=str(models["clip"])).image_inputs(image)["pixel_values"]
    half = HFBackend(model=str(models["clip"]), dtype="bfloat16").image_inputs(image)["pixel_values"]
    assert full.dtype == np.float32 and half.dtype == np.float16 and np.abs(half - full).max() < 2e-3
    vectors = [HFBackend(model=str(models["clip"]), dtype=dtype, runtime="torch")._load().embed_images([image])
               for dtype in ("float32", "bfloat16")]
    assert float(vectors[0][0] @ vectors[1][0]) > 0.99


def test_on_cpu_the_image_tower_runs_on_onnx_runtime_with_pytorchs_vectors(models, small_photos, tmp_path):
    """auto: the graph is exported once per machine (cached by the weights' digest) and used because its vectors
    match eager PyTorch's; int8 is another model id, close to them."""
    images = [Image.open(path).convert("RGB") for path in sorted(small_photos.glob("*.png"))]
    eager = HFBackend(model=str(models["clip"]), runtime="torch")._load()
    auto = HFBackend(model=str(models["clip"]))._load()
    assert eager.onnx is None and auto.onnx is not None
    assert np.abs(auto.embed_images(images) - eager.embed_images(images)).max() < 1e-4
    int8 = HFBackend(model=str(models["clip"]), runtime="onnx-int8")
    assert int8.model_id == HFBackend(model=str(models["clip"])).model_id + "-int8"
    assert (int8._load().embed_images(images) * eager.embed_images(images)).sum(axis=1).min() > 0.99


def test_a_tower_onnx_cannot_take_runs_on_pytorch_unless_onnx_was_asked_for(models, monkeypatch, caplog):
    from transforms.backends import hf_runtime

    def refuse(*args):
        raise RuntimeError("Exporting the operator 'aten::new_thing' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(hf_runtime, "export_image_tower", refuse)
    monkeypatch.setenv("ZERO_SHOT_CACHE", "off")
    assert HFBackend(model=str(models["siglip"]))._load().onnx is None
    assert "the image tower cannot run on ONNX Runtime (RuntimeError: Exporting the operator" in caplog.text
    with pytest.raises(RuntimeError, match="--hf_runtime onnx cannot run this model"):
        HFBackend(model=str(models["siglip"]), runtime="onnx")._load()


def test_onnx_runtime_is_for_float32_on_the_cpu(models, tmp_path):
    assert HFBackend(model=str(models["clip"]), device="cpu", dtype="bfloat16").resolved_runtime == "torch"
    assert HFBackend(model=str(tiny_siglip2_naflex(tmp_path / "naflex"))).resolved_runtime == "torch"
    with pytest.raises(ValueError, match="runs float32 on the CPU"):
        HFBackend(model=str(models["clip"]), runtime="onnx", dtype="float16").check()
