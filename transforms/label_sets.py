"""Loads a label set by built-in name (labels/NAME.txt) or from any path or fsspec URL, and validates it."""
from __future__ import annotations

from collections import Counter
from importlib import resources

import fsspec


class LabelSetError(ValueError):
    """The label set cannot be used: unreadable, empty or with duplicates."""


def builtin_label_sets() -> list[str]:
    """Names accepted by `--labels NAME`."""
    return sorted(p.name[: -len(".txt")] for p in resources.files("labels").iterdir() if p.name.endswith(".txt"))


def parse_label_lines(text: str) -> list[str]:
    """One label per line; whole-line `#` comments and blank lines are skipped, surrounding spaces stripped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def load_label_set(name_or_path: str) -> list[str]:
    """The labels of a built-in set or of a file; raises LabelSetError with a one-line reason."""
    builtin = resources.files("labels") / f"{name_or_path}.txt"
    try:
        if builtin.is_file():
            text = builtin.read_text(encoding="utf-8")
        else:
            with fsspec.open(name_or_path, "rt", encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LabelSetError(
            f"cannot read label set {name_or_path!r} ({type(e).__name__}); give a file path or URL, "
            f"or one of the built-in sets: {', '.join(builtin_label_sets())}"
        ) from None
    labels = parse_label_lines(text)
    if not labels:
        raise LabelSetError(f"label set {name_or_path!r} has no labels (one label per line, '#' starts a comment)")
    counts = Counter(label.casefold() for label in labels)
    duplicates = sorted({label for label in labels if counts[label.casefold()] > 1})
    if duplicates:
        raise LabelSetError(f"label set {name_or_path!r} repeats labels: {', '.join(duplicates)}")
    return labels
