"""A new backend is one file and one registry line: this one lives in this file, is registered for the test, and
runs through the command line end to end with no change anywhere else. A new job is one module: the one
docs/ARCHITECTURE.md shows runs here as it is written there."""
from __future__ import annotations

import dataclasses
import importlib
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from pipelines import classify_images
from tests.conftest import REPO, colour_photo
from transforms import backends
from transforms.backends.base import Backend, Embedder, l2_normalize, option
from transforms.run_folder import read_manifest, read_run

COLOURS = {"red": (220, 20, 30), "green": (30, 200, 40), "blue": (20, 40, 210), "yellow": (230, 220, 30)}


class HistogramEmbedder(Embedder):
    """An image is its colour histogram; a text is the histogram bin of the colour word it contains."""

    def __init__(self, levels: int):
        self.levels, self.dim, self.model_id = levels, levels ** 3, f"colour-histogram-{levels}"

    def _bin(self, pixels: np.ndarray) -> np.ndarray:
        q = (pixels.astype(np.int64) * self.levels) // 256
        return (q[..., 0] * self.levels + q[..., 1]) * self.levels + q[..., 2]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return l2_normalize(np.stack([np.bincount(self._bin(np.asarray(image)).ravel(), minlength=self.dim)
                                      for image in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.full((len(texts), self.dim), 1e-3)
        for row, text in zip(vectors, texts):
            for word, rgb in COLOURS.items():
                if word in text:
                    row[self._bin(np.array(rgb))] = 1.0
        return l2_normalize(vectors)


@dataclasses.dataclass(frozen=True)
class HistogramBackend(Backend):
    """Colour histograms: a deterministic toy backend."""

    levels: int = option(4, "quantization levels per colour channel")
    name = "histogram"
    logit_scale = 20.0
    default_templates = "plain"

    @property
    def model_id(self) -> str:
        return f"colour-histogram-{self.levels}"

    @property
    def embedding_dim(self) -> int:
        return self.levels ** 3

    def _load(self) -> Embedder:
        return HistogramEmbedder(self.levels)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, HistogramBackend.name, HistogramBackend)  # the one registry line


def test_a_backend_defined_in_one_file_runs_through_the_command_line(registered, tmp_path):
    for name, rgb in COLOURS.items():
        (tmp_path / f"{name}.jpg").write_bytes(colour_photo(rgb))
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\nyellow\n")
    assert classify_images.main(["--input", f"{tmp_path}/*.jpg", "--labels", str(tmp_path / "labels.txt"),
                                 "--output", str(tmp_path / "out"), "--backend", "histogram",
                                 "--histogram_levels", "4", "--top_k", "1"]) == 0
    rows = read_run(str(tmp_path / "out"))
    assert {row["uri"].rsplit("/", 1)[1]: row["labels"] for row in rows} == {
        f"{name}.jpg": [name] for name in COLOURS}
    assert {row["model"] for row in rows} == {"colour-histogram-4"}
    assert all(row["evidence"] == [] for row in rows)


def test_its_settings_are_on_the_command_line(registered, capsys):
    with pytest.raises(SystemExit):
        classify_images.main(["--help"])
    assert "--histogram_levels" in capsys.readouterr().out


def _job_from_the_architecture_doc(tmp_path: Path, monkeypatch):
    """The module docs/ARCHITECTURE.md shows under "How to add a job", as a module a job can live in."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = doc[doc.index("## How to add a job"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert len(code.splitlines()) < 60
    (tmp_path / "count_labels.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("count_labels")


def test_the_documented_new_job_runs_through_the_runner(finished_run, tmp_path, monkeypatch, capsys):
    count_labels = _job_from_the_architecture_doc(tmp_path, monkeypatch)
    out = tmp_path / "counts"
    assert count_labels.main(["--run", str(finished_run), "--output", str(out)]) == 0
    top = Counter(row["labels"][0] for row in read_run(str(finished_run)))
    assert {row["label"]: row["images"] for row in read_run(str(out), "counts")} == top
    manifest = read_manifest(str(out))
    assert manifest.job == "count" and manifest.details["counted"]
    assert count_labels.main(["--run", str(finished_run), "--output", str(out)]) == 2  # a finished run is there
    assert count_labels.main(["--run", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --run '{tmp_path / 'nothing'}' holds no " \
                                                                "finished run"


def test_the_readmes_library_examples_run_as_written(photos, tmp_path, monkeypatch):
    """README, "Use it in your own pipeline": the pipeline of your own, and a job run from a plan."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use it in your own pipeline"):readme.index("## Run on Dataflow")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").symlink_to(photos)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert {Path(row["uri"]).name for row in read_run("out/labels")} == {p.name for p in photos.glob("*.jpg")}
    assert list(Path("out/pipeline").glob("results-*.parquet"))
