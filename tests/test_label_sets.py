"""Label sets: built-in names, files and URLs, and the clear errors for unusable sets."""
import fsspec
import pytest

from transforms.label_sets import (
    LabelSetError,
    builtin_label_sets,
    builtin_templates,
    load_label_phrases,
    load_label_set,
    load_templates,
)


def test_builtin_sets_have_their_documented_sizes():
    assert {"everyday", "imagenet", "cifar10", "cifar100"} <= set(builtin_label_sets())
    sizes = {name: len(load_label_set(name)) for name in ("everyday", "imagenet", "cifar10", "cifar100")}
    assert sizes == {"everyday": 12, "imagenet": 1000, "cifar10": 10, "cifar100": 100}
    assert load_label_set("imagenet")[281:283] == ["tabby cat", "tiger cat"]


def test_file_with_comments_and_blank_lines(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my labels\n\n  cat  \ndog\n# done\n")
    assert load_label_set(str(path)) == ["cat", "dog"]


def test_any_fsspec_url_is_read():
    with fsspec.open("memory://sets/colors.txt", "w") as f:
        f.write("red\ngreen\n")
    assert load_label_set("memory://sets/colors.txt") == ["red", "green"]


@pytest.mark.parametrize("content, message", [
    ("# nothing but comments\n\n", "is empty"),
    ("cat\ndog\nCat\n", "repeats labels: Cat, cat"),
    ("cat\nUnknown\n", "has a label 'Unknown': that is what --min_prob and --multi_label report"),
])
def test_unusable_sets_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message):
        load_label_set(str(path))


def test_missing_set_names_the_builtin_ones(tmp_path):
    with pytest.raises(LabelSetError, match="cannot read label set .* cifar10, cifar100, everyday, general, imagenet"):
        load_label_set(str(tmp_path / "nope.txt"))


def test_label_phrases_are_reported_under_their_label(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("vehicle: car | truck |  bus \nfeline: cat | kitten\ndog\nratio: 16:9 screen\n")
    assert load_label_phrases(str(path)) == {"vehicle": ["car", "truck", "bus"], "feline": ["cat", "kitten"],
                                             "dog": ["dog"], "ratio": ["16:9 screen"]}
    assert load_label_set(str(path)) == ["vehicle", "feline", "dog", "ratio"]


def test_templates_by_name_or_file(tmp_path):
    assert load_templates("photo") == ["a photo of a {}."]
    assert {"plain", "photo", "photos", "simple", "openai"} <= set(builtin_templates())
    assert len(load_templates("openai")) == 80
    path = tmp_path / "mine.txt"
    path.write_text("a drawing of {}\nno placeholder here\n")
    with pytest.raises(LabelSetError, match="'no placeholder here' .* needs exactly one '{}'"):
        load_templates(str(path))
