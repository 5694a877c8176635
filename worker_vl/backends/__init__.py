"""VL backends. Their names are registered in ``common.core.backends.VL_BACKENDS``; a backend's
module (torch, transformers) is imported only when it is asked for."""

from __future__ import annotations

from typing import Any

from common.core.backends import load_backend
from worker_vl.backends.base import Backend, VLItem, VLOutput

__all__ = ["Backend", "VLItem", "VLOutput", "get_backend"]


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Build the backend registered as ``name`` with ``kwargs`` (weights are not loaded yet)."""
    backend: Backend = load_backend("vl", name, **kwargs)
    return backend
