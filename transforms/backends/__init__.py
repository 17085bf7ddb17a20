"""Embedding backends, chosen by name: `local` (embedded, offline), `nomic` (hosted Nomic Embed API) and `hf`
(open-weights models through transformers). No backend module imports its model libraries until a model loads."""
from __future__ import annotations

from transforms.backends.base import Backend, Embedder, l2_normalize
from transforms.backends.hf import HFBackend
from transforms.backends.local import LocalBackend
from transforms.backends.nomic import NomicBackend

BACKENDS: dict[str, type[Backend]] = {backend.name: backend for backend in (LocalBackend, NomicBackend, HFBackend)}


def get_backend(name: str, **options) -> Backend:
    """The backend registered under `name`, configured with `options`; unknown names are a clear error."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**options)


__all__ = ["BACKENDS", "Backend", "Embedder", "get_backend", "l2_normalize"]
