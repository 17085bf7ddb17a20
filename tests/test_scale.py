"""A big bucket: 20,000 small generated images (1% of them broken) through the command line, each accounted for once.
Marked slow (about five minutes on 2 cores); `make test` runs it."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from testbed.images import make_images
from transforms.run_folder import read_manifest, read_run

REPO = Path(__file__).resolve().parents[1]
IMAGES = 20_000
BROKEN_EVERY = 100


@pytest.mark.slow
def test_twenty_thousand_images_each_land_exactly_once(tmp_path):
    images = make_images(tmp_path / "images", IMAGES, max_side=64)
    broken = sorted(images.glob("*.jpg"))[::BROKEN_EVERY]
    for path in broken:
        path.write_bytes(path.read_bytes()[:100])  # truncated: a decode error, not a crash
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--input", f"{images}/*.jpg",
                           "--labels", "everyday", "--output", str(out), "--batch_size", "64"],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results, errors = read_run(str(out)), read_run(str(out), "errors")
    seen = Counter(row["uri"] for row in results + errors)
    assert set(seen) == {str(p) for p in images.glob("*.jpg")} and set(seen.values()) == {1}
    assert {row["uri"] for row in errors} == {str(p) for p in broken}
    assert {row["stage"] for row in errors} == {"decode"}
    manifest = read_manifest(str(out))
    assert manifest.rows("results") == len(results) == IMAGES - len(broken)
    assert manifest.rows("errors") == len(errors) == len(broken)
    assert f"labeled {IMAGES - len(broken)} images, {len(broken)} errors" in done.stdout
