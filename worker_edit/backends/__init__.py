"""Edit backends. Their names are registered in ``common.core.backends.EDIT_BACKENDS``; a backend's
module (torch, diffusers) is imported only when it is asked for."""

from __future__ import annotations

from typing import Any

from common.core.backends import EDIT_BACKENDS, MIN_STEPS, SCHEDULERS, load_backend

__all__ = ["EDIT_BACKENDS", "MIN_STEPS", "SCHEDULERS", "get_backend"]


def get_backend(name: str, **kwargs: Any) -> Any:
    """Construct the backend registered as ``name`` with ``kwargs`` (weights are not loaded yet).
    Raises ``ConfigError`` for an unknown name."""
    return load_backend("edit", name, **kwargs)
