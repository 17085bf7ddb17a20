"""What users install works: the wheel and the sdist, each in a fresh venv with no dev requirements, label the sample
photos through the `zero-shot-labels` command with no torch installed; the `[hf]` extra (torch from the pinned wheel
first, as the README says) labels them with a tiny model saved as transformers saves one. Each runs outside the
repository, so that nothing its venv or source tree holds can hide a missing module or file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.allowed_versions import copy_tracked_files

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
    copy_tracked_files(source)
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", dist, source, cwd=source)
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


# What the plain install must not bring: the PyTorch stack the hf extra adds.
HEAVY = ("torch", "transformers", "sentence-transformers", "scipy", "scikit-learn")
SITE_PACKAGES_LIMIT = 1.0e9


def _venv(tmp_path: Path, *install: str) -> Path:
    """A fresh venv with `install` pip-installed in it; its bin folder."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", *install, cwd=tmp_path)
    return venv / "bin"


def _site_packages_bytes(bin_folder: Path) -> int:
    (site,) = bin_folder.parent.glob("lib/python*/site-packages")
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_the_plain_install_labels_the_sample_photos_without_torch(kind, distributions, photos, tmp_path):
    bin_folder = _venv(tmp_path, distributions[kind])
    installed = _run(bin_folder / "python", "-m", "pip", "list", "--format=freeze", cwd=tmp_path).stdout.lower()
    assert not [name for name in HEAVY if f"\n{name}==" in f"\n{installed}"], installed
    assert _site_packages_bytes(bin_folder) <= SITE_PACKAGES_LIMIT
    assert "classify  label every image" in _run(bin_folder / "zero-shot-labels", "--help", cwd=tmp_path).stdout
    out = tmp_path / "out"
    done = _run(bin_folder / "zero-shot-labels", "classify", "--input", f"{photos}/*.jpg", "--labels", "general",
                "--output", out, "--max_error_fraction", "0", cwd=tmp_path)
    assert "labeled 7 images, 0 errors" in done.stdout, done.stdout
    assert f"{bin_folder.parent}" in _run(bin_folder / "python", "-c", "import transforms; print(transforms.__file__)",
                                          cwd=tmp_path).stdout
    read = _run(bin_folder / "python", "-c", "import sys; from transforms.run_folder import read_run; "
                "rows = read_run(sys.argv[1]); print(len(rows), sorted({r['labels'][0] for r in rows}))", out,
                cwd=tmp_path)
    assert read.stdout.startswith("7 ")
    refused = subprocess.run([bin_folder / "zero-shot-labels", "classify", "--input", f"{photos}/*.jpg", "--labels",
                              "general", "--output", tmp_path / "hf", "--backend", "hf", "--hf_model", tmp_path],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    # the extra, added the way the package was installed: here from the file
    assert f"pip install '{distributions[kind]}[hf]'" in refused.stderr and not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_the_hf_extra_labels_with_a_model_saved_as_transformers_saves_it(distributions, photos, tmp_path):
    from tests.tiny_models import tiny_clip

    model = tiny_clip(tmp_path / "tiny-clip")
    bin_folder = _venv(tmp_path, f"torch=={TORCH}")  # the CPU wheel, first: the extra's range takes it
    _run(bin_folder / "python", "-m", "pip", "install", "-q", f"{distributions['wheel']}[hf]", cwd=tmp_path)
    out = tmp_path / "out"
    done = _run(bin_folder / "zero-shot-labels", "classify", "--input", f"{photos}/*.jpg", "--labels", "general",
                "--output", out, "--backend", "hf", "--hf_model", model, "--max_error_fraction", "0", cwd=tmp_path)
    assert "labeled 7 images, 0 errors" in done.stdout, done.stdout
