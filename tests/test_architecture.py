"""docs/ARCHITECTURE.md is true: it names every module of the product, and every path it names exists."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def test_every_module_is_named():
    modules = [p for folder in ("transforms", "pipelines") for p in (REPO / folder).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "backends"]
    unnamed = [str(p.relative_to(REPO)) for p in modules
               if str(p.relative_to(REPO)) not in DOC and f"`{p.name}`" not in DOC]
    assert unnamed == []


def test_every_named_path_exists():
    named = set(re.findall(r"`((?:transforms|pipelines|tests|benchmarks|labels|docs)/[\w/.]*)`", DOC))
    missing = [path for path in named if "NAME" not in path and not (REPO / path).exists()]
    assert named and missing == []
