"""What every job's command line shares: one-line configuration errors with exit status 2, and common options."""
from __future__ import annotations

import argparse

from transforms.backends import BACKENDS


class ConfigError(ValueError):
    """The job cannot start as configured; the message is the one line the user sees."""


class OneLineParser(argparse.ArgumentParser):
    """Argument mistakes end like every other configuration error: one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--backend, one of the registered backends."""
    parser.add_argument("--backend", default="local", choices=sorted(BACKENDS), help="embedding backend")


def add_backend_settings(parser: argparse.ArgumentParser) -> None:
    """Every registered backend's own settings (--local_top_t, --nomic_api_key_file...), a group each."""
    for backend in BACKENDS.values():
        backend.add_options(parser)
