"""Real photos that installed packages ship (scikit-image, scikit-learn, matplotlib): the demo's, the tests' and the
benchmarks' images, and the `samples` dev source. Nothing is committed or downloaded."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

DEMO_PHOTOS = ("astronaut", "chelsea", "china", "coffee", "flower", "motorcycle", "rocket")


def sample_photo(name: str) -> Image.Image:
    """A scikit-image photo by its function name ("motorcycle": the left stereo view), scikit-learn's "china" and
    "flower", or matplotlib's "grace_hopper"."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return Image.open(io.BytesIO(f.read())).convert("RGB")
    from skimage import data

    pixels = getattr(data, "stereo_motorcycle" if name == "motorcycle" else name)()
    return Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels)


def write_sample_photos(folder: Path, names: tuple[str, ...] = DEMO_PHOTOS) -> None:
    """The photos as JPEG files NAME.jpg in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sample_photo(name).save(folder / f"{name}.jpg", quality=92)
