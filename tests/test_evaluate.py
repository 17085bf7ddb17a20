"""The evaluation job: dev sets built from registry packages, metrics that count failures, clear truth errors."""
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipelines import evaluate, report
from testbed import devsets
from transforms.label_sets import load_label_set
from transforms.reliability import calibration_error, expected_calibration_error, reliability


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    folder = tmp_path_factory.mktemp("devsets")
    devsets.build_foolbox_sets(folder)
    devsets.build_everyday_set(folder)
    return folder


def test_dev_sets_have_truth_for_every_image(dev):
    for name, count in {"imagenet": 20, "cifar10": 20, "cifar100": 20, "everyday": 14}.items():
        truth = evaluate.read_truth(str(dev / name / "truth.csv"), load_label_set(name))
        assert len(truth) == count and all((dev / name / uri).is_file() for uri in truth), name
    assert evaluate.read_truth(str(dev / "imagenet" / "truth.csv"), load_label_set("imagenet"))[
        "imagenet_00_243.jpg"] == "Bullmastiff"


def test_evaluation_job_writes_metrics_table_confusion_and_reliability(dev, tmp_path, capsys):
    (dev / "imagenet" / "imagenet_05_853.jpg").write_bytes(b"not an image any more")
    out = tmp_path / "eval"
    status = evaluate.main(["--input", f"{dev}/imagenet/*.jpg", "--truth", str(dev / "imagenet" / "truth.csv"),
                            "--labels", "imagenet", "--output", str(out), "--report", str(tmp_path / "report.html")])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 20 and metrics["failed"] == 1  # the broken file stays in the denominator
    assert metrics["top1"] >= 0.75 and metrics["top5"] >= metrics["top1"]
    assert metrics["backend"] == "local" and metrics["labels"] == "imagenet"
    assert metrics["per_class"]["Bullmastiff"]["support"] == 1
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # The reliability diagram: 20 images in bins of top-1 probability, whose gaps make the ECE; drawn as a PNG and
    # in the report, which `report` draws again from the predictions run alone.
    bins = metrics["reliability"]
    assert sum(b["images"] for b in bins) == 20 and metrics["ece"] == pytest.approx(calibration_error(bins))
    assert all(b["from"] <= b["mean_prob"] <= b["to"] for b in bins)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert page.count('<rect class="bin"') == len(bins) and f"{metrics['ece']:.3f}" in page
    assert report.main(["--run", str(out / "predictions"), "--output", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text().count('<rect class="bin"') == len(bins)
    assert (out / "per_class.csv").read_text().startswith("label,support,predicted,correct,precision,recall")
    assert "imagenet on local: n=20" in capsys.readouterr().out


def test_scores_count_failures_as_wrong():
    truth = {"a.jpg": "cat", "b.jpg": "dog", "/data/c.jpg": "cat"}
    predictions = {"/x/a.jpg": ["cat", "dog"], "/data/c.jpg": ["dog", "cat"]}
    metrics = evaluate.score(truth, predictions, {"/x/b.jpg": "decode"}, ["cat", "dog"])
    assert (metrics["n"], metrics["top1"], metrics["top5"], metrics["failed"]) == (3, 1 / 3, 2 / 3, 1)
    assert metrics["per_class"]["cat"] == {"support": 2, "predicted": 1, "correct": 1, "precision": 1.0,
                                           "recall": 0.5}
    assert metrics["per_class"]["dog"]["recall"] == 0.0


@pytest.mark.parametrize("content, message", [
    ("uri,label\na.jpg,unicorn\n", "--truth labels not in the label set: unicorn"),
    ("file,class\na.jpg,cat\n", "needs a header with columns uri,label"),
    ("uri,label\nx/a.jpg,cat\ny/a.jpg,dog\n", None),
])
def test_bad_truth_files(tmp_path, capsys, content, message):
    (tmp_path / "truth.csv").write_text(content)
    if message is None:  # the same file name in two folders is fine when full paths are given
        assert len(evaluate.read_truth(str(tmp_path / "truth.csv"), ["cat", "dog"])) == 2
        return
    status = evaluate.main(["--input", str(tmp_path / "*.jpg"), "--truth", str(tmp_path / "truth.csv"),
                            "--labels", "cifar10", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_only_an_evaluated_run_gets_a_reliability_diagram(tmp_path):
    bins = reliability([0.95] * 10 + [0.25] * 4, [True] * 9 + [False] + [True] + [False] * 3)
    assert [(b["from"], b["images"], b["accuracy"]) for b in bins] == [(0.2, 4, 0.25), (0.9, 10, 0.9)]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"reliability": bins}))
    assert report.evaluated(str(tmp_path / "eval" / "predictions")) == bins
    assert report.evaluated(str(tmp_path / "labels")) is None  # a classify run: no truth, no diagram
    assert report.evaluated(str(tmp_path / "predictions")) is None  # no metrics.json beside it


def test_expected_calibration_error_compares_confidence_with_accuracy():
    # 10 images at 0.95 confidence, 9 right: |0.9 - 0.95| for all of them.
    assert expected_calibration_error([0.95] * 10, [True] * 9 + [False]) == pytest.approx(0.05)
    # Two bins: 0.25 confidence with 1 of 4 right (gap 0), 0.75 with 2 of 4 right (gap 0.25), half the images each.
    confidence = [0.25] * 4 + [0.75] * 4
    correct = [True, False, False, False, True, True, False, False]
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.125)


def test_openclipart_pictures_take_the_label_of_their_folder(tmp_path):
    root = tmp_path / "png"
    for folder in ("animals/mammals/dogs", "people", "people/smilies", "unsorted"):
        (root / folder).mkdir(parents=True)
        Image.new("RGBA", (40, 30), (10, 20, 30, 255)).save(root / folder / "picture.png")
    devsets.build_openclipart_set(tmp_path / "out", root)
    truth = (tmp_path / "out" / "openclipart-coarse" / "truth.csv").read_text().splitlines()
    assert truth == ["uri,label", "animals__mammals__dogs__picture.png,mammal", "people__picture.png,person"]
    assert (tmp_path / "out" / "openclipart-coarse" / "labels.txt").read_text() == "person\nmammal\n"  # COARSE order


def _opencv_doc_package(cache, names):
    """A stand-in for Debian's opencv-doc package, built with dpkg-deb, holding pictures under the given names."""
    tree = cache.parent / "tree"
    data = tree / devsets.OPENCV_DATA.lstrip("./")
    data.mkdir(parents=True)
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30), (i, 20, 30)).save(data / name, format="PNG")  # the set copies bytes, any format
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text("Package: opencv-doc\nVersion: 4.6.0+dfsg-12\nArchitecture: all\n"
                                             "Maintainer: test <test@example.org>\nDescription: test\n")
    cache.mkdir()
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(cache / "opencv-doc_4.6.0+dfsg-12_all.deb")],
                   check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian)")
def test_opencv_photos_are_read_from_the_package_without_installing_it(tmp_path):
    _opencv_doc_package(tmp_path / "cache", [*devsets.OPENCV_COARSE_TRUTH, "chessboard.png"])
    devsets.build_opencv_set(tmp_path / "out", tmp_path / "cache")
    truth = (tmp_path / "out" / "opencv-coarse" / "truth.csv").read_text().splitlines()
    assert truth[1:] == sorted(f"{name},{label}" for name, label in devsets.OPENCV_COARSE_TRUTH.items())
    assert (tmp_path / "out" / "opencv-coarse" / "labels.txt").read_text().split("\n")[:2] == ["fruit", "vehicle"]


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian)")
def test_a_package_without_a_named_photo_stops_the_build(tmp_path):
    _opencv_doc_package(tmp_path / "cache", list(devsets.OPENCV_COARSE_TRUTH)[1:])
    with pytest.raises(SystemExit, match="apple.jpg"):
        devsets.build_opencv_set(tmp_path / "out", tmp_path / "cache")


def test_the_accuracy_run_globs_every_image_of_a_set_and_not_its_truth(tmp_path):
    for name in ("a.jpg", "b.png", "truth.csv", "labels.txt"):
        (tmp_path / name).write_text("")
    pattern = devsets.image_glob(tmp_path)
    assert [p.name for p in sorted(tmp_path.glob(pattern))] == ["a.jpg", "b.png"]
    (tmp_path / "b.png").unlink()
    assert devsets.image_glob(tmp_path) == "*.jpg"


def _deb(cache: Path, package: str, files: dict[str, bytes]) -> None:
    """A stand-in for a Debian package in the dev sets' cache, built with dpkg-deb, holding `files` (path -> bytes)."""
    tree = cache.parent / f"tree-{package}"
    for path, data in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: test <test@example.org>\nDescription: test\n")
    cache.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(cache / f"{package}_1_all.deb")], check=True,
                   capture_output=True)


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian)")
def test_the_held_out_drawings_are_the_stamps_of_their_folders_and_no_label_outweighs_the_rest(tmp_path, monkeypatch):
    root = "usr/share/tuxpaint/stamps/"
    files = {f"{root}animals/birds/bird{i:02}.png": _png(i) for i in range(20)}  # more than a label takes
    files |= {f"{root}animals/birds/bird00_mirror.png": _png(99), f"{root}animals/fish/thumbs/fish.png": _png(98),
              f"{root}animals/fish/trout.png": _png(97), f"{root}animals/fish/trout.svg": b"<svg/>",
              f"{root}symbols/alphabets/a.png": _png(96)}  # mirrored copies, thumbnails, other folders: left out
    _deb(tmp_path / "cache", devsets.TUXPAINT_PACKAGE, files)
    monkeypatch.setattr(devsets, "TUXPAINT_PER_LABEL", 5)
    devsets.build_tuxpaint_set(tmp_path / "out", tmp_path / "cache")
    rows = (tmp_path / "out" / "tuxpaint-held-out" / "truth.csv").read_text().splitlines()[1:]
    assert rows == [f"animals__birds__bird{i:02}.png,bird" for i in (0, 4, 8, 12, 16)] + \
        ["animals__fish__trout.png,fish"]
    assert (tmp_path / "out" / "tuxpaint-held-out" / "labels.txt").read_text().splitlines() == \
        list(devsets.TUXPAINT_HELD_OUT)


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb (Debian)")
def test_the_out_of_vocabulary_set_takes_textures_and_wallpapers_and_no_picture_of_an_object(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "arcade-3.3.3-py3-none-any.whl", "w") as wheel:
        for name in ("tiles/grass.png", "tiles/grassCenter.png", "tiles/brickGrey.png", "tiles/lockRed.png",
                     "backgrounds/stars.png", "layers/sun.png"):
            wheel.writestr(f"arcade/resources/assets/images/{name}", _png(1))
    _deb(cache, "gnome-backgrounds", {"usr/share/backgrounds/gnome/wood-d.webp": _png(2),
                                      "usr/share/backgrounds/gnome/symbolic-d.webp": _png(3)})
    _deb(cache, "mate-backgrounds", {"usr/share/backgrounds/mate/abstract/Silk.png": _png(4),
                                     "usr/share/backgrounds/mate/abstract/Elephants.jpg": _png(5),
                                     "usr/share/backgrounds/mate/nature/Tree.jpg": _png(6)})
    devsets.build_out_of_vocabulary_set(tmp_path / "out", cache)
    folder = tmp_path / "out" / "oov"
    assert sorted(p.name for p in folder.iterdir()) == [
        "abstract__Silk.png", "backgrounds__stars.png", "gnome__wood-d.webp", "labels.txt", "tiles__brickGrey.png",
        "tiles__grass.png", "tiles__grassCenter.png"]
    assert (folder / "labels.txt").read_text().splitlines() == list(devsets.OOV_LABELS)
