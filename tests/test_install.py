"""What users install works: the wheel and the sdist, each in a fresh venv with no dev requirements (torch from the
pinned wheel first, as the README says), label the sample photos with no error, run outside the repository so that
nothing its venv or source tree holds can hide a missing module or file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TORCH = os.environ.get("TORCH_VERSION", "2.13.0")  # the Makefile's pin


def _run(*command, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of the tracked files (no build/ or egg-info can leak in)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", dist, source, cwd=source)
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_the_installed_package_labels_the_sample_photos(kind, distributions, photos, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", f"torch=={TORCH}", cwd=tmp_path)
    _run(python, "-m", "pip", "install", "-q", distributions[kind], cwd=tmp_path)
    out = tmp_path / "out"
    done = _run(python, "-m", "pipelines.classify_images", "--input", f"{photos}/*.jpg", "--labels", "general",
                "--output", out, "--max_error_fraction", "0", cwd=tmp_path)
    assert "labeled 7 images, 0 errors" in done.stdout, done.stdout
    assert f"{venv}" in _run(python, "-c", "import transforms; print(transforms.__file__)", cwd=tmp_path).stdout
    read = _run(python, "-c", "import sys; from transforms.run_folder import read_run; "
                              "rows = read_run(sys.argv[1]); print(len(rows), sorted({r['labels'][0] for r in rows}))",
                out, cwd=tmp_path)
    assert read.stdout.startswith("7 ")
