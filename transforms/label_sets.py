"""Loads label sets and prompt templates by built-in name (labels/NAME.txt, labels/templates/NAME.txt) or from
any path or fsspec URL, and validates them."""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from importlib import resources
from typing import Sequence

import fsspec

from transforms.faults import StoreError, one_line, with_retries

LOG = logging.getLogger("zero_shot")
# What an image gets when no label is chosen (--min_prob, --multi_label): no label set may use it.
UNKNOWN = "unknown"
# "label: phrase one | phrase two" reports `label` and embeds every phrase; a plain line is its own phrase.
_PHRASES = re.compile(r"^(?P<label>[^:]+?)\s*:\s+(?P<phrases>.+)$")


class LabelSetError(ValueError):
    """The label set or template file cannot be used: unreadable, empty, duplicated or malformed."""


def _builtin_names(folder) -> list[str]:
    return sorted(p.name[: -len(".txt")] for p in folder.iterdir() if p.name.endswith(".txt"))


def builtin_label_sets() -> list[str]:
    """Names accepted by `--labels NAME`."""
    return _builtin_names(resources.files("labels"))


def builtin_templates() -> list[str]:
    """Names accepted by `--templates NAME`."""
    return _builtin_names(resources.files("labels") / "templates")


def parse_label_lines(text: str) -> list[str]:
    """One entry per line (LF, CRLF or CR); whole-line `#` comments and blank lines are skipped, surrounding spaces
    and byte order marks (a Windows editor's, or a concatenated file's) stripped."""
    lines = (line.replace("\ufeff", "").strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _read_text(path: str) -> str:
    with fsspec.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def _read_lines(name_or_path: str, folder, kind: str) -> list[str]:
    builtin = folder / f"{name_or_path}.txt"
    try:
        if builtin.is_file():
            text = builtin.read_text(encoding="utf-8")
        else:
            text = with_retries(name_or_path, lambda: _read_text(name_or_path))
    except (OSError, UnicodeDecodeError, ValueError, ImportError, StoreError) as e:  # ImportError: no driver
        detail = one_line(e) if isinstance(e, (ImportError, StoreError)) else type(e).__name__
        raise LabelSetError(
            f"cannot read {kind} {name_or_path!r} ({detail}); give a file path or URL, "
            f"or one of the built-in ones: {', '.join(_builtin_names(folder))}"
        ) from None
    lines = parse_label_lines(text)
    if not lines:
        raise LabelSetError(f"{kind} {name_or_path!r} is empty (one entry per line, '#' starts a comment)")
    return lines


def load_label_phrases(name_or_path: str) -> dict[str, list[str]]:
    """label -> the phrases embedded for it, in file order; raises LabelSetError with a one-line reason."""
    entries = []
    for line in _read_lines(name_or_path, resources.files("labels"), "label set"):
        match = _PHRASES.match(line)
        if match:
            phrases = [p.strip() for p in match["phrases"].split("|") if p.strip()]
            entries.append((match["label"].strip(), phrases or [match["label"].strip()]))
        else:
            entries.append((line, [line]))
    if len(entries) == 1 and any(sep in entries[0][0] for sep in ",\t"):
        LOG.warning("label set %r has one line, %r, read as one label: put one label per line", name_or_path,
                    entries[0][0])
    check_label_names([label for label, _ in entries], f"label set {name_or_path!r}")
    return dict(entries)


def check_label_names(labels: Sequence[str], source: str) -> None:
    """Raises LabelSetError for a repeated label (case-insensitive), one named `unknown`, or one with nothing but
    punctuation (a stray `-` or `...` line): no model reads meaning into it. Symbols such as emoji are labels."""
    if blank := [label for label in labels if all(unicodedata.category(c)[0] in "PZC" for c in label)]:
        raise LabelSetError(f"{source} has a label {blank[0]!r} with nothing but punctuation; remove that line")
    if reserved := [label for label in labels if label.casefold() == UNKNOWN]:
        raise LabelSetError(f"{source} has a label {reserved[0]!r}: that is what --min_prob and --multi_label "
                            "report for an image no label fits; rename it (e.g. 'other')")
    counts = Counter(label.casefold() for label in labels)
    if duplicates := sorted({label for label in labels if counts[label.casefold()] > 1}):
        raise LabelSetError(f"{source} repeats labels: {', '.join(duplicates)}")


def load_label_set(name_or_path: str) -> list[str]:
    """The labels a set reports, in file order."""
    return list(load_label_phrases(name_or_path))


def prompt_texts(phrases: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every phrase in every template: 'a photo of a {}.' x ['cat', 'kitten'] -> 2 texts."""
    return [template.replace("{}", phrase) for phrase in phrases for template in templates]


def load_templates(name_or_path: str) -> list[str]:
    """Prompt templates, each with one `{}` where the label (or phrase) goes."""
    templates = _read_lines(name_or_path, resources.files("labels") / "templates", "templates")
    if bad := [t for t in templates if t.count("{}") != 1]:
        raise LabelSetError(f"template {bad[0]!r} in {name_or_path!r} needs exactly one '{{}}' for the label")
    return templates
