"""Many distinct JPEGs made from the sample photos: the inputs of tests and benchmarks that need hundreds of images."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from pipelines.samples import write_sample_photos


def make_images(folder: Path, count: int, seed: int = 0, max_side: Optional[int] = None) -> Path:
    """`count` distinct JPEGs (random crops, flips, sizes and qualities of the sample photos), at most `max_side`
    pixels on the longer side if given (thumbnails: many images written and decoded quickly)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    for old in folder.glob("*.jpg"):
        old.unlink()
    sources = folder.parent / "sources"
    write_sample_photos(sources)
    photos = [Image.open(path).convert("RGB") for path in sorted(sources.glob("*.jpg"))]
    rng = random.Random(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        scale = rng.uniform(0.8, 1.6)
        image = image.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BILINEAR)
        if max_side:
            image.thumbnail((max_side, max_side))
        image.save(folder / f"img{i:05d}.jpg", quality=rng.randint(80, 95))
    return folder
