"""What a job pays before its first image: class vectors made at build time, the text model without torch, the image
graph exported once per machine. No test here times anything (docs/BENCHMARKS.md does, by ratios in one run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labels import build_class_vectors
from pipelines.jobs import workers_in_this_process
from transforms.backends import image_runtime, local
from transforms.backends.local import LocalBackend, class_vectors, packaged_class_vectors
from transforms.backends.minilm import MiniLM
from transforms.backends.weights import WeightsError

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


def test_the_exported_graph_is_cached_keyed_by_the_weights_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(image_runtime.CACHE_ENV, str(tmp_path))
    exports = []

    def export():
        exports.append(1)
        return b"graph bytes"

    key = image_runtime.graph_key("a" * 64)
    assert image_runtime.cached_graph(key, export) == b"graph bytes"
    assert image_runtime.cached_graph(key, export) == b"graph bytes" and len(exports) == 1  # read back
    assert image_runtime.graph_key("b" * 64) != key  # other weights, another file
    (cached,) = tmp_path.glob("*.onnx")
    cached.write_bytes(b"damaged")  # no longer the bytes its digest names: exported again, and replaced
    assert image_runtime.cached_graph(key, export) == b"graph bytes" and len(exports) == 2
    assert cached.read_bytes() == b"graph bytes"
    monkeypatch.setenv(image_runtime.CACHE_ENV, "off")
    assert image_runtime.cached_graph(key, export) == b"graph bytes" and len(exports) == 3


def test_a_cached_graph_without_its_digest_is_exported_again(tmp_path, monkeypatch):
    """A writer killed between the graph and its .sha256 file leaves a graph nobody can check: not used."""
    monkeypatch.setenv(image_runtime.CACHE_ENV, str(tmp_path))
    image_runtime.cached_graph("d" * 64, lambda: b"first")
    (digest,) = tmp_path.glob("*.sha256")
    digest.unlink()
    assert image_runtime.cached_graph("d" * 64, lambda: b"second") == b"second"
    assert digest.is_file()


def test_a_cache_folder_that_cannot_be_written_only_costs_the_export(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(image_runtime.CACHE_ENV, str(blocked / "cache"))
    assert image_runtime.cached_graph("k" * 64, lambda: b"graph") == b"graph"


@pytest.mark.slow
def test_a_warm_start_labels_without_importing_torch(photos, tmp_path):
    """The second job on a machine reads the cached graph and the packaged class vectors: no torch, no exporter."""
    env = {**os.environ, image_runtime.CACHE_ENV: str(tmp_path / "cache")}
    code = ("import sys; from pipelines import classify_images; status = classify_images.main(sys.argv[1:]); "
            "print('torch' in sys.modules, 'sentence_transformers' in sys.modules, status)")
    outputs = []
    for run in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", code, "--input", f"{photos}/*.jpg", "--labels", "general",
                               "--output", str(tmp_path / run)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.split()[-3:])
    assert outputs == [["True", "False", "0"], ["False", "False", "0"]]  # the cold start exported the graph
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
