"""Shared fixtures: real sample photos from installed packages, and hostile files generated on the spot."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.samples import write_sample_photos

REPO = Path(__file__).resolve().parents[1]


def commit_gate(gate: Path) -> dict[str, str]:
    """Environment for a job subprocess whose commit step waits until the file `gate` exists (tests/inject)."""
    return {"PYTHONPATH": f"{REPO / 'tests' / 'inject'}{os.pathsep}{REPO}", "ZERO_SHOT_TEST_COMMIT_GATE": str(gate)}


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory) -> Path:
    """The exported image graph is cached in a folder of this session, not in the home folder of whoever runs the
    tests; jobs the tests start in subprocesses inherit it."""
    from transforms.backends.graph_cache import CACHE_ENV

    folder = tmp_path_factory.mktemp("graph_cache")
    os.environ[CACHE_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """astronaut, chelsea, china, coffee, flower, motorcycle, rocket as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    write_sample_photos(folder)
    return folder


def _png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def decompression_bomb_png(side: int = 30_000) -> bytes:
    """A tiny PNG that claims side x side pixels of grayscale: 900 MP, a few KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (side + 1) * 64)  # only the first rows; the header is what matters
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def hostile_files(photo: Path) -> dict[str, tuple[bytes, bool]]:
    """file name -> (bytes, whether it must decode). Built from one real photo so the good ones are real too."""
    rgb = Image.open(photo).convert("RGB")
    jpeg = photo.read_bytes()
    files: dict[str, tuple[bytes, bool]] = {
        "empty.jpg": (b"", False),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], False),
        "random.jpg": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), False),
        "page.jpg": (b"<!DOCTYPE html><html><body>Not Found</body></html>", False),
        "bomb.png": (decompression_bomb_png(), False),
    }
    buffer = io.BytesIO()
    rgb.convert("CMYK").save(buffer, "JPEG")
    files["cmyk.jpg"] = (buffer.getvalue(), True)
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    files["gray16.png"] = (_png_bytes(Image.fromarray(gray16)), True)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    files["palette_transparent.png"] = (_png_bytes(palette, transparency=0), True)
    rgba = rgb.copy()
    rgba.putalpha(128)
    files["rgba.png"] = (_png_bytes(rgba), True)
    files["gray.png"] = (_png_bytes(rgb.convert("L")), True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, to be shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", exif=exif)
    files["exif_rotated.jpg"] = (buffer.getvalue(), True)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.convert("L").convert("RGB")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.gif"] = (buffer.getvalue(), True)
    files["one_pixel.png"] = (_png_bytes(Image.new("RGB", (1, 1), (200, 30, 30))), True)
    files["strip_4000x3.png"] = (_png_bytes(rgb.resize((4000, 3))), True)
    return files


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, photos) -> Path:
    """A finished classify run of the sample photos (labels `general`) that kept its embeddings."""
    from pipelines import classify_images

    out = tmp_path_factory.mktemp("finished") / "out"
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output", str(out),
                                 "--keep_embeddings"]) == 0
    return out


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory, photos) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, (data, _) in hostile_files(photos / "chelsea.jpg").items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def nomic_api(monkeypatch, tmp_path):
    """A fresh loopback Nomic API; the nomic client in this process and its children is pointed at it."""
    import nomic.embed

    from testbed.nomic_api import FakeNomicAPI
    from transforms.backends import base

    api = FakeNomicAPI().start()
    # Each test gets a new server: drop clients loaded for an earlier one.
    monkeypatch.setattr(base, "_LOADED", {})
    monkeypatch.setattr(nomic.embed, "atlas_class", None)
    monkeypatch.setenv("ATLAS_API_PATH", api.url)
    monkeypatch.setenv("NOMIC_API_KEY", api.key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.nomic of the developer is read or written
    yield api
    api.stop()


def colour_photo(rgb, size=(64, 48)) -> bytes:
    """A JPEG of one flat colour: the loopback Nomic API embeds images by their mean colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, tuple(rgb)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()
