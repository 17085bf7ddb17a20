"""Remote workers run the versions the launcher ran with: setup.py allows ranges, and a worker that installs the
package fresh (Dataflow's --setup_file, a portable runner's SDK containers) would otherwise take the newest release of
each dependency on the day it starts, which nothing has tested with this launcher's pipeline."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from importlib import metadata
from typing import Sequence

from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PACKAGE = "beam-zero-shot-labels"
# The extras that serve the job, as against the test tools: a launcher with the test extra installed does not ship
# pytest to its workers.
DEV_EXTRAS = ("test",)
DIRECT_RUNNERS = (None, "DirectRunner", "direct", "SwitchingDirectRunner")  # None: Beam's default, the DirectRunner


def _installed_extras(distribution: metadata.Distribution) -> set[str]:
    """The extras of `distribution` whose every requirement is installed: the ones this launcher uses."""
    requirements = [Requirement(text) for text in distribution.requires or ()]
    return {extra for extra in distribution.metadata.get_all("Provides-Extra") or () if extra not in DEV_EXTRAS
            and all(_installed(r.name) for r in requirements
                    if r.marker is not None and r.marker.evaluate({"extra": extra})
                    and not r.marker.evaluate({"extra": ""}))}


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _closure(name: str, extras: set[str], seen: dict[str, tuple[metadata.Distribution, set[str]]]) -> None:
    """Every installed distribution that `name` with `extras` requires, directly or not, into `seen` (name -> the
    distribution and the extras it was walked with). A package reached again with more extras (apache-beam, then
    apache-beam[gcp]) is walked again for them."""
    key = canonicalize_name(name)
    if key in seen and extras <= seen[key][1]:
        return
    distribution = metadata.distribution(name)
    walked = extras | (seen[key][1] if key in seen else set())
    seen[key] = (distribution, walked)
    for text in distribution.requires or ():
        requirement = Requirement(text)
        wanted = requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                   for extra in ("", *extras))
        if wanted and _installed(requirement.name):
            _closure(requirement.name, set(requirement.extras), seen)


def launcher_requirements(package: str = PACKAGE) -> list[str]:
    """`name==version` of each installed package that `package` (with the extras installed here) requires, directly
    or not, sorted; the package itself is left out (the workers install it from --setup_file). Versions are public:
    `torch==2.13.0` is what PyPI serves for a launcher's `2.13.0+cpu`, and on a GPU worker is its CUDA build."""
    seen: dict[str, tuple[metadata.Distribution, set[str]]] = {}
    _closure(package, _installed_extras(metadata.distribution(package)), seen)
    del seen[canonicalize_name(package)]
    return sorted(f"{distribution.metadata['Name']}=={Version(distribution.version).public}"
                  for distribution, _ in seen.values())


def workers_in_this_process(beam_args: Sequence[str]) -> bool:
    """The job's workers are this process: the DirectRunner, unless it runs them as subprocesses."""
    options = PipelineOptions(list(beam_args))
    return (options.view_as(StandardOptions).runner in DIRECT_RUNNERS
            and options.view_as(DirectOptions).direct_running_mode != "multi_processing")


def workers_install_packages(beam_args: Sequence[str]) -> bool:
    """Whether the job's workers are processes that may install the package fresh: any runner but the
    DirectRunner, and the portable runner's but for LOOPBACK workers, which are this process."""
    options = PipelineOptions(list(beam_args))
    runner = options.view_as(StandardOptions).runner
    if runner in DIRECT_RUNNERS:
        return False
    return (options.view_as(PortableOptions).environment_type or "").upper() != "LOOPBACK"


def with_launcher_versions(beam_args: Sequence[str]) -> list[str]:
    """`beam_args`, with the launcher's versions (launcher_requirements) as the workers' --requirements_file where
    the workers install packages and the job gave none of its own. Beam ships the file to each worker, which installs
    it before the package; --requirements_cache=skip spares the launcher a download of every wheel for the workers'
    platform (they fetch them from the package index, as they would the package's own dependencies)."""
    options = PipelineOptions(list(beam_args)).view_as(SetupOptions)
    if options.requirements_file or not workers_install_packages(beam_args):
        return list(beam_args)
    try:
        pins = launcher_requirements()
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed: nothing to pass on
        logging.warning("%s is not installed here: its workers take the newest versions setup.py allows", PACKAGE)
        return list(beam_args)
    folder = tempfile.mkdtemp(prefix="worker-versions-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "requirements.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# The versions the launcher ran with ({PACKAGE}'s requirements, all of them).\n")
        f.write("\n".join(pins) + "\n")
    print(f"the workers install this launcher's versions of {len(pins)} packages (--requirements_file {path})")
    cache = [] if options.requirements_cache else ["--requirements_cache", "skip"]
    return [*beam_args, "--requirements_file", path, *cache]
