"""The two ends of what setup.py allows, each in a clean venv: `python -m tests.allowed_versions newest|lowest`.

`newest` installs the newest release of every dependency that setup.py allows today, `lowest` the lowest (uv's
`--resolution lowest-direct`), with every extra: the package's own wheel, as users install it. Then the installed
`zero-shot-labels classify` labels the sample photos, and the fast suite runs. `make test` runs the pinned set of
requirements-dev.txt; these two make sure that the ranges around the pins hold too.

When a check fails, the versions that differ from the pins are tried one at a time at their pinned version, and the
last line names the release that breaks the project, e.g. "apache-beam 2.78.0 breaks the classify job (with 2.77.0,
the pinned version, it passes)".
"""
from __future__ import annotations

import argparse
import email.parser
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
EXTRAS = "hf,test,aws,gcp,search"
# Only its bundled dev images are used (tests/test_evaluate.py), as in the Makefile.
UNPACKAGED = ("foolbox==3.3.4",)
BUILD_TOOLS = ("pip", "setuptools>=64")  # tests/test_packaging.py builds the wheel as pip does, with no isolation
CULPRIT_SEARCH_S = 20 * 60  # the search for the breaking release stops trying after this long


def say(line: str) -> None:
    print(line, flush=True)


def run(command: list, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout, **kwargs)


def uv(*args: object) -> subprocess.CompletedProcess:
    done = run([sys.executable, "-m", "uv", *args])
    if done.returncode:
        raise SystemExit(f"error: uv {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done


def pins() -> dict[str, str]:
    """Package -> the version requirements-dev.txt pins, in its order, and torch's, which the Makefile pins."""
    pinned = {}
    for line in (REPO / "requirements-dev.txt").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*])?==(\S+)", line):
            pinned[canonicalize_name(match.group(1))] = match.group(3)
    pinned["torch"] = re.search(r"^TORCH_VERSION \?= (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    return pinned


def installed(python: Path) -> dict[str, str]:
    freeze = uv("pip", "freeze", "--python", python).stdout
    return {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", freeze, re.M)}


def copy_tracked_files(source: Path) -> None:
    """The files git tracks, copied to `source`: what a build from them holds is what a clean clone holds (no build/
    or egg-info of the checkout leaks in, and none is written there)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)


def build_wheel(folder: Path) -> Path:
    """The project's wheel, built by uv from a copy of the tracked files (copy_tracked_files; setup.py fetches the
    text model into it)."""
    source = folder / "source"
    copy_tracked_files(source)
    uv("build", "--wheel", "--out-dir", folder / "dist", source)
    (wheel,) = (folder / "dist").glob("*.whl")
    return wheel


def requirements(wheel: Path, extras: str) -> list[str]:
    """What the wheel requires, with `extras`, as requirements of their own: given as direct requirements beside the
    wheel, uv's lowest-direct takes their lowest versions (of a wheel's own requirements it takes the newest, as
    of any package's dependencies)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        texts = email.parser.Parser().parsestr(archive.read(name).decode("utf-8")).get_all("Requires-Dist") or []
    wanted = []
    for requirement in map(Requirement, texts):
        marker, requirement.marker = requirement.marker, None
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras.split(",")):
            wanted.append(str(requirement))
    return wanted


def make_venv(end: str, venv: Path, wheel: Path) -> Path:
    """A fresh venv at `venv` with the wheel, its extras and the newest or lowest versions they allow; its python."""
    shutil.rmtree(venv, ignore_errors=True)
    uv("venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    resolution = ["--resolution", "lowest-direct", *requirements(wheel, EXTRAS)] if end == "lowest" else []
    uv("pip", "install", "--quiet", "--python", python, f"{wheel}[{EXTRAS}]", *resolution)
    uv("pip", "install", "--quiet", "--python", python, "--no-deps", *UNPACKAGED)
    uv("pip", "install", "--quiet", "--python", python, *BUILD_TOOLS)
    return python


def classify_check(python: Path, folder: Path) -> Callable[[], Optional[str]]:
    """The installed command labels the sample photos, run outside the checkout: None, or what went wrong."""
    photos, work = folder / "photos", folder / "classify"
    done = run([python, "-c", "import sys, pathlib; from pipelines.samples import write_sample_photos; "
                "write_sample_photos(pathlib.Path(sys.argv[1]))", photos], cwd=folder)
    if done.returncode:
        raise SystemExit(f"error: cannot write the sample photos:\n{done.stderr[-3000:]}")

    def check() -> Optional[str]:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        done = run([python.parent / "zero-shot-labels", "classify", "--input", f"{photos}/*.jpg", "--labels",
                    "everyday", "--output", work / "out", "--max_error_fraction", "0"], cwd=work, timeout=600)
        output = done.stdout + done.stderr
        if done.returncode or "labeled 7 images, 0 errors" not in done.stdout or "Traceback" in output:
            return f"exit status {done.returncode}:\n{output[-4000:]}"
        return None

    return check


def suite_check(python: Path, folder: Path) -> Callable[[], Optional[str]]:
    """The fast suite from the checkout, on this venv's packages; after a failure, only the tests that failed."""
    failed: list[str] = []

    def check() -> Optional[str]:
        report = folder / "junit.xml"
        done = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "--junitxml", report,
                    *(failed or ["tests"])], cwd=REPO, timeout=3600)
        if done.returncode == 0:
            say(done.stdout.strip().splitlines()[-1])  # pytest's closing line: how many passed
            return None
        text = report.read_text() if report.exists() else ""
        failed[:] = failed or [f"{path.replace('.', '/')}.py::{name}" for path, name in
                               re.findall(r'<testcase classname="([^"]+)" name="([^"]+)"[^>]*>\s*<(?:failure|error)',
                                          text)]
        return done.stdout[-6000:]

    return check


def find_culprit(python: Path, check: Callable[[], Optional[str]], what: str, end: str) -> str:
    """The one line that names the release breaking `check`: each version that differs from its pin is set to the
    pin alone, in requirements-dev.txt's order (the package's own dependencies first)."""
    pinned, now = pins(), installed(python)
    differing = [name for name in pinned if name in now and now[name] != pinned[name].split("+")[0]]
    tried, deadline = [], time.monotonic() + CULPRIT_SEARCH_S
    for name in differing:
        if time.monotonic() > deadline:
            break
        say(f"  trying {name} {pinned[name]} (the pin) in place of {now[name]} ...")
        move = run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", python,
                    f"{name}=={pinned[name]}"])
        if move.returncode == 0 and check() is None:
            return (f"error: the {end} versions allowed fail: {name} {now[name]} breaks {what} (with {pinned[name]}, "
                    "the pinned version, it passes)")
        tried.append(f"{name} {now[name]}")
        uv("pip", "install", "--quiet", "--python", python, f"{name}=={now[name]}")
    return (f"error: the {end} versions allowed fail {what}, and no single package at its pinned version fixes it; "
            f"they differ from the pins in: {', '.join(tried) or 'nothing'}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.allowed_versions", description=__doc__.splitlines()[0])
    parser.add_argument("end", choices=("newest", "lowest"))
    parser.add_argument("--venv", type=Path, help="where the venv goes (default: .venv-END in the checkout)")
    args = parser.parse_args(argv)
    venv = (args.venv or REPO / f".venv-{args.end}").resolve()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        start = time.monotonic()
        python = make_venv(args.end, venv, build_wheel(folder))
        versions, pinned = installed(python), pins()
        say(f"{args.end} versions allowed, installed in {time.monotonic() - start:.0f} s: "
            + ", ".join(f"{name} {versions[name]}" + (f" (pinned {pinned[name]})" if versions[name] != pinned[name]
                                                      else "")
                        for name in sorted(pinned) if name in versions))
        for what, check in (("the classify job", classify_check(python, folder)),
                            ("the fast suite", suite_check(python, folder))):
            started = time.monotonic()
            failure = check()
            if failure is None:
                say(f"{args.end}: {what} passed in {time.monotonic() - started:.0f} s")
                continue
            say(failure)
            say(find_culprit(python, check, what, args.end))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
