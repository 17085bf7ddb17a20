"""What every job's command line shares: one-line configuration errors with exit status 2, and common options."""
from __future__ import annotations

import argparse
import re
from typing import NoReturn, Sequence

from transforms import internals
from transforms.backends import BACKENDS
from transforms.faults import one_line

# "package.module.SomeError: message" at the start of a line: how a worker's traceback, which runners fold into the
# text of the exception the launcher sees, names the exception that ended it.
_RAISED = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)): (.+)$", re.MULTILINE)


class ConfigError(ValueError):
    """The job cannot start as configured; the message is the one line the user sees."""


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes end like every other configuration error: one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend, one of the registered backends."""
    parser.add_argument("--backend", default="local", choices=sorted(BACKENDS), help="embedding backend")


class _HelpAll(argparse.Action):
    """--help_all: --help with the research settings too (those that lost on held-out data, kept for benchmarks)."""

    def __init__(self, option_strings, dest, research: Sequence[argparse.Action] = (), **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="show every setting, the research ones too, and exit")
        self.research = research

    def __call__(self, parser, namespace, values, option_string=None):
        for action in self.research:
            action.help = action.research_help
        parser.print_help()
        parser.exit()


def add_backend_settings(parser: argparse.ArgumentParser) -> None:
    """Every registered backend's own settings (--local_top_t, --nomic_api_key_file...), a group each, and
    --help_all, which lists the research settings that --help leaves out."""
    research = [action for backend in BACKENDS.values() for action in backend.add_options(parser)]
    parser.add_argument("--help_all", action=_HelpAll, research=research)


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """Arguments that neither this job nor any Beam options class knows: Beam would silently drop them."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    internals.declare_every_beam_option(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def failure_line(error: BaseException) -> str:
    """What ended a failed job, in one line: the last exception a worker's traceback names (a missing key, not
    "Traceback (most recent call last):", which is all the first line of a runner's error says)."""
    raised = _RAISED.findall(str(error))
    if raised:
        name, message = raised[-1]
        return f"{name}: {message}"
    return one_line(error)


def exit_job(status: int) -> NoReturn:
    """Ends a job's process with `status`, skipping the teardown of its objects (internals.end_process). Only for a
    process that a job owns: the library never ends one."""
    internals.end_process(status)
