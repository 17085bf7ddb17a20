"""`make bench`, install: what `pip install` of this project costs in a fresh venv, now and at an earlier commit.

For each: the wheel built from that commit's tracked files, installed into a new venv (the earlier commits needed
torch, installed first from the pinned CPU wheel, as their README said; so does the `[hf]` extra now), timed from
pip's start to its end; the venv's site-packages size; whether torch came in; the largest distributions. Every
figure comes from this one run, with pip's download cache warm for all, so the times compare installing, not the
network.

    python -m benchmarks.install [--before COMMIT]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the Makefile's pin: the CPU wheel on this machine


def wheel_of(commit: str, folder: Path) -> Path:
    """The wheel of `commit`'s tracked files (HEAD: the working tree's tracked files, as they are now)."""
    source = folder / f"source-{commit}"
    source.mkdir(parents=True)
    if commit == "HEAD":
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "cf", "-", "--null", "-T", "-"], cwd=REPO, input=names, check=True,
                       stdout=open(folder / "tree.tar", "wb"))
    else:
        subprocess.run(["git", "archive", "-o", str(folder / "tree.tar"), commit], cwd=REPO, check=True)
    subprocess.run(["tar", "xf", str(folder / "tree.tar"), "-C", str(source)], check=True)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(source / "dist"),
                    str(source)], cwd=source, check=True, capture_output=True)
    (wheel,) = (source / "dist").glob("*.whl")
    return wheel


def install(wheel: Path, folder: Path, first: tuple[str, ...], extra: str = "") -> dict:
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    start = time.perf_counter()
    for step in [*first], [f"{wheel}{extra}"]:
        if step:
            subprocess.run(pip + step, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    (site,) = venv.glob("lib/python*/site-packages")
    sizes: dict[str, int] = {}
    for path in site.iterdir():
        if path.is_dir() and not path.name.endswith((".dist-info", "__pycache__")):
            sizes[path.name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    return {"seconds": seconds, "bytes": total, "torch": "\ntorch==" in f"\n{freeze}",
            "distributions": freeze.count("=="), "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:6]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a30f6a0", help="the earlier commit (default a30f6a0: the last that "
                                                            "installed torch with the package)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wheels = {commit: wheel_of(commit, Path(tmp, commit)) for commit in (args.before, "HEAD")}
        for name, commit, first, extra in ((f"before ({args.before})", args.before, (TORCH,), ""),
                                           ("now", "HEAD", (), ""), ("now, [hf] (torch CPU wheel first)", "HEAD",
                                                                     (TORCH,), "[hf]")):
            folder = Path(tmp, f"{commit}{extra}")
            install(wheels[commit], folder / "warm-up", first, extra)  # fills pip's cache: the timed one reads it
            rows.append((name, install(wheels[commit], folder / "timed", first, extra)))
    print(f"\n{datetime.date.today()}, {platform.node()}, Python {platform.python_version()}: `pip install WHEEL` in a "
          "fresh venv (before: torch CPU wheel first)\n")
    print("| install | time (s) | site-packages (MB) | distributions | torch | largest folders (MB) |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for name, row in rows:
        largest = ", ".join(f"{folder} {size / 1e6:.0f}" for folder, size in row["largest"])
        print(f"| {name} | {row['seconds']:.0f} | {row['bytes'] / 1e6:.0f} | {row['distributions']} | "
              f"{'yes' if row['torch'] else 'no'} | {largest} |")
    before, now = rows[0][1], rows[1][1]
    print(f"\nnow / before: time {now['seconds'] / before['seconds']:.2f}, size {now['bytes'] / before['bytes']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
