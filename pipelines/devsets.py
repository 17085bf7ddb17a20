"""`make devsets`: small labelled dev sets built offline from files that registry packages ship; never committed.

devsets/NAME/ holds the images, truth.csv (uri,label) and labels.txt, for NAME in imagenet, cifar10, cifar100
(20 images each from the foolbox==3.3.4 wheel, whose file names end with the class index) and everyday
(scikit-image sample photos labelled by hand with the everyday labels).
"""
from __future__ import annotations

import csv
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Union

from PIL import Image

from transforms.label_sets import load_label_set

OUTPUT = Path("devsets")
# Sample photos whose everyday label a person can give without hesitation; ambiguous ones (coffee, clock,
# coins, brick, the cameraman) are left out rather than forced into a class.
EVERYDAY_TRUTH = {
    "astronaut": "space", "rocket": "space", "hubble_deep_field": "space", "moon": "space",
    "chelsea": "animal", "horse": "animal",
    "stereo_motorcycle": "transportation",
    "immunohistochemistry": "science", "retina": "science", "cell": "science", "microaneurysms": "science",
    "text": "school", "page": "school",
    "gravel": "mineral",
}


def _package_folder(package: str) -> Path:
    """The installed folder of `package`, found without importing it (foolbox's own imports are not needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {package} is not installed; run `make devsets` (it installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def _write_set(folder: Path, label_set: str, images: dict[str, tuple[Union[Path, Image.Image], str]]) -> None:
    """Shipped files are copied byte for byte; arrays are saved as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "truth.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        for file_name, (source, label) in sorted(images.items()):
            if isinstance(source, Path):
                shutil.copyfile(source, folder / file_name)
            else:
                source.save(folder / file_name)
            writer.writerow([file_name, label])
    (folder / "labels.txt").write_text("\n".join(load_label_set(label_set)) + "\n")


def build_foolbox_sets(output: Path) -> None:
    """imagenet, cifar10 and cifar100 from foolbox/data/{set}_{i}_{class index}.{png,jpg}."""
    data = _package_folder("foolbox") / "data"
    for name in ("imagenet", "cifar10", "cifar100"):
        classes = load_label_set(name)
        images = {}
        for path in sorted(data.glob(f"{name}_*")):
            class_index = int(path.stem.rsplit("_", 1)[1])
            images[path.name] = (path, classes[class_index])
        _write_set(output / name, name, images)


def build_everyday_set(output: Path) -> None:
    from skimage import data

    images = {}
    for name, label in EVERYDAY_TRUTH.items():
        pixels = getattr(data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        images[f"{name}.png"] = (Image.fromarray(pixels), label)
    _write_set(output / "everyday", "everyday", images)


def main() -> int:
    build_foolbox_sets(OUTPUT)
    build_everyday_set(OUTPUT)
    for folder in sorted(OUTPUT.iterdir()):
        count = sum(1 for _ in (folder / "truth.csv").open()) - 1
        print(f"{folder}: {count} images, truth.csv, labels.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
