"""Embedding backends, chosen by name: `local` (embedded, offline)."""
from __future__ import annotations

from transforms.backends.base import Backend, Embedder, l2_normalize
from transforms.backends.local import LocalBackend

BACKENDS: dict[str, type[Backend]] = {LocalBackend.name: LocalBackend}


def get_backend(name: str, **options) -> Backend:
    """The backend registered under `name`, configured with `options`; unknown names are a clear error."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**options)


__all__ = ["BACKENDS", "Backend", "Embedder", "get_backend", "l2_normalize"]
