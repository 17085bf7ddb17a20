"""Label sets: built-in names, files and URLs, and the clear errors for unusable sets."""
import fsspec
import pytest

from transforms.label_sets import LabelSetError, builtin_label_sets, load_label_set


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
    ("# nothing but comments\n\n", "has no labels"),
    ("cat\ndog\nCat\n", "repeats labels: Cat, cat"),
])
def test_unusable_sets_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message):
        load_label_set(str(path))


def test_missing_set_names_the_builtin_ones(tmp_path):
    with pytest.raises(LabelSetError, match="cannot read label set .* everyday"):
        load_label_set(str(tmp_path / "nope.txt"))
