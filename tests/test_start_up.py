"""What a job pays before its first image: class vectors made at build time, the text model without torch, the image
graph exported once per machine. No test here times anything (docs/BENCHMARKS.md does, by ratios in one run)."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labels import build_class_vectors
from pipelines.workers import workers_in_this_process
from transforms.backends import graph_cache, image_runtime, local
from transforms.backends.local import LocalBackend, class_vectors, packaged_class_vectors
from transforms.backends.minilm import MiniLM
from transforms.backends.weights import WeightsError, packaged_file, read_torch_weights

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a tabby cat.", "espresso", "猫 🍕", "", "a " * 300, "Golden Retriever, a kind of dog"]


def test_the_packaged_class_vectors_are_what_the_text_model_gives_today():
    packaged = packaged_class_vectors()
    regenerated = build_class_vectors.build()
    assert str(regenerated["texts_sha256"]) == packaged["texts_sha256"]  # the default settings' texts
    assert str(regenerated["model_sha256"]) == packaged["model_sha256"] == local.MINILM_FILES[0][1]
    assert np.abs(regenerated["vectors"] - packaged["vectors"]).max() < 1e-6


def test_the_default_settings_use_the_packaged_vectors_and_others_embed_their_own(monkeypatch):
    def refuse(*args):
        raise AssertionError("the class texts were embedded at start")

    monkeypatch.setattr(local, "_sentence_vectors", refuse)
    assert local.ConSEEmbedder(LocalBackend()).class_vectors is packaged_class_vectors()["vectors"]
    with pytest.raises(AssertionError, match="embedded at start"):
        local.ConSEEmbedder(LocalBackend(class_prompt="{}"))  # other texts: computed, never the packaged ones


def test_a_class_vectors_file_of_another_text_model_is_refused(monkeypatch):
    stale = dict(packaged_class_vectors(), model_sha256="0" * 64)
    monkeypatch.setattr(local, "packaged_class_vectors", lambda: stale)
    texts = build_class_vectors.default_class_texts()
    with pytest.raises(WeightsError, match="regenerate it"):
        class_vectors(local._load_minilm(), texts)


def test_the_numpy_text_encoder_gives_sentence_transformers_vectors():
    from sentence_transformers import SentenceTransformer

    model_dir = local.packaged_file(local.MINILM_PACKAGE, *local.MINILM_FILES[0]).parent
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    ours = MiniLM(model_dir).encode(TEXTS)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    assert local._load_minilm() is local._load_minilm()  # loaded once per process
    assert np.abs(ours - reference).max() < 1e-5
    assert MiniLM(model_dir).tokens("猫 🍕 hello") == ["[UNK]", "[UNK]", "hello"]


def _torch_export(model) -> bytes:
    """The PyTorch module as torch.onnx exports it: the reference for the graph written without torch."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracing: "SAME" padding sizes become constants, as they are
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17,
                          input_names=[image_runtime.INPUT], output_names=[image_runtime.OUTPUT],
                          dynamic_axes={image_runtime.INPUT: {0: "batch"}, image_runtime.OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def test_the_graph_written_without_torch_gives_the_torch_exports_logits(photos):
    ours = image_runtime.OnnxClassifier(local._build_graph())
    exported = image_runtime.OnnxClassifier(_torch_export(local._load_torch_classifier()))
    eager = image_runtime.TorchClassifier(local._load_torch_classifier())
    pixels = np.stack([image_runtime.preprocess(Image.open(path).convert("RGB"))
                       for path in sorted(photos.glob("*.jpg"))[:4]])
    logits = ours.logits(pixels)
    assert np.abs(logits - exported.logits(pixels)).max() < 1e-5
    assert np.abs(logits - eager.logits(pixels)).max() < 1e-5
    assert ours.logits(pixels[:1]).shape == (1, 1000)  # any batch size


def test_the_weights_reader_builds_arrays_and_nothing_else(tmp_path):
    """A .pth file is a pickle: one that names any other global (how a hostile file runs code) is refused."""
    weights = read_torch_weights(packaged_file(local.EFFICIENTNET_PACKAGE, *local.EFFICIENTNET_FILE))
    assert weights["_fc.weight"].shape == (1000, 1280) and weights["_bn0.num_batches_tracked"].dtype == np.int64
    hostile = tmp_path / "hostile.pth"
    with hostile.open("wb") as f:
        for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(part, f)
        f.write(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")
    with pytest.raises(WeightsError, match="os.system has no place in a file of weights"):
        read_torch_weights(hostile)
    assert not (tmp_path / "ran").exists()


def test_the_exported_graph_is_cached_keyed_by_the_weights_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(graph_cache.CACHE_ENV, str(tmp_path))
    exports = []

    def export():
        exports.append(1)
        return b"graph bytes"

    def cached(key):  # what ONNX Runtime gets: the cached file's path, which it reads itself
        graph = graph_cache.cached_graph("test", key, export)
        assert isinstance(graph, str) and Path(graph).parent == tmp_path
        return graph_cache.graph_bytes(graph)

    key = image_runtime.graph_key("a" * 64)
    assert cached(key) == b"graph bytes"
    assert cached(key) == b"graph bytes" and len(exports) == 1  # read back
    assert image_runtime.graph_key("b" * 64) != key  # other weights, another file
    (graph,) = tmp_path.glob("*.onnx")
    graph.write_bytes(b"damaged")  # no longer the bytes its digest names: exported again, and replaced
    assert cached(key) == b"graph bytes" and len(exports) == 2
    assert graph.read_bytes() == b"graph bytes"
    # A stamp of the old form (the digest alone) is checked by hashing, then stamped with size and change time.
    (stamp,) = tmp_path.glob("*.sha256")
    stamp.write_text(hashlib.sha256(b"graph bytes").hexdigest())
    assert cached(key) == b"graph bytes" and len(exports) == 2 and len(stamp.read_text().split()) == 3
    monkeypatch.setenv(graph_cache.CACHE_ENV, "off")
    assert graph_cache.cached_graph("test", key, export) == b"graph bytes" and len(exports) == 3


def test_a_cached_graph_without_its_digest_is_exported_again(tmp_path, monkeypatch):
    """A writer killed between the graph and its .sha256 file leaves a graph nobody can check: not used."""
    monkeypatch.setenv(graph_cache.CACHE_ENV, str(tmp_path))
    graph_cache.cached_graph("test", "d" * 64, lambda: b"first")
    (digest,) = tmp_path.glob("*.sha256")
    digest.unlink()
    assert graph_cache.graph_bytes(graph_cache.cached_graph("test", "d" * 64, lambda: b"second")) == b"second"
    assert digest.is_file()


def test_a_cache_folder_that_cannot_be_written_only_costs_the_export(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(graph_cache.CACHE_ENV, str(blocked / "cache"))
    assert graph_cache.cached_graph("test", "k" * 64, lambda: b"graph") == b"graph"


@pytest.mark.slow
def test_no_start_imports_torch_and_a_warm_one_not_even_onnx(photos, tmp_path):
    """The first job on a machine writes the graph from the weights without torch; the second reads it from the
    cache, with the packaged class vectors."""
    env = {**os.environ, graph_cache.CACHE_ENV: str(tmp_path / "cache")}
    code = ("import sys; from pipelines import classify_images; status = classify_images.main(sys.argv[1:]); "
            "print('torch' in sys.modules, 'onnx' in sys.modules, status)")
    outputs = []
    for run in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", code, "--input", f"{photos}/*.jpg", "--labels", "general",
                               "--output", str(tmp_path / run)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.split()[-3:])
    assert outputs == [["False", "True", "0"], ["False", "False", "0"]]  # the cold start wrote the graph
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    # Beam's `resource` module stays: RunInference logged "Resource module is not available" twice per job when
    # its model manager was marked absent instead of replaced.
    assert "Resource module" not in done.stderr, done.stderr[-2000:]


def test_settings_that_do_not_change_the_class_texts_keep_the_packaged_vectors():
    assert local.ConSEEmbedder(LocalBackend(top_t=5)).class_vectors is packaged_class_vectors()["vectors"]


def test_a_job_whose_workers_are_this_process_starts_loading_the_model_at_once():
    assert workers_in_this_process([]) and workers_in_this_process(["--runner", "DirectRunner"])
    assert not workers_in_this_process(["--direct_running_mode", "multi_processing"])
    assert not workers_in_this_process(["--runner", "PortableRunner"])


def test_the_warm_up_loads_the_model_once_and_the_worker_gets_that_copy(monkeypatch):
    built = []
    monkeypatch.setattr(local, "ConSEEmbedder", lambda settings: built.append(settings) or object.__new__(Loaded))
    backend = LocalBackend(top_t=7)  # a configuration nothing else in the process has loaded
    backend.warm_up()
    embedder = backend.load()  # the worker's load waits for the warm-up's instead of building a second one
    assert built == [backend] and embedder.prepared and backend.load() is embedder


def test_a_failed_warm_up_is_quiet_and_the_worker_reports_the_failure(monkeypatch, capfd):
    monkeypatch.setattr(local, "ConSEEmbedder", lambda settings: (_ for _ in ()).throw(WeightsError("weights gone")))
    backend = LocalBackend(top_t=8)
    backend.warm_up()
    with pytest.raises(WeightsError, match="weights gone"):
        backend.load()
    assert capfd.readouterr().err == ""


class Loaded:
    """What the warm-up's load returns in these tests: an embedder that notes that its image model was loaded."""

    prepared = False

    def prepare_images(self):
        self.prepared = True
