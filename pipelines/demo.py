"""`make demo`: labels the sample photos that scikit-image and scikit-learn ship, and prints each one's top labels."""
from __future__ import annotations

import glob
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipelines import classify_images

OUTPUT = Path("demo-output")


def write_sample_photos(folder: Path) -> None:
    """Real photos from installed packages, written as JPEG files: nothing is committed or downloaded."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    photos.update({name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")})
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=92)


def main() -> int:
    photos = OUTPUT / "photos"
    write_sample_photos(photos)
    prefix = OUTPUT / "labels"
    for old in glob.glob(f"{prefix}*.parquet"):
        Path(old).unlink()
    status = classify_images.main(
        ["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(prefix), "--top_k", "3"])
    if status:
        return status
    table = pq.read_table(sorted(glob.glob(f"{prefix}-0*.parquet"))).sort_by("uri")
    print(f"\nTop labels ({table.column('model')[0]}), from {prefix}-*.parquet:")
    for row in table.to_pylist():
        best = ", ".join(f"{label} {prob:.2f}" for label, prob in zip(row["labels"], row["probs"]))
        print(f"  {Path(row['uri']).name:16} {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
