"""Registry of VL backends: name -> "module:Class", imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from common.errors import ConfigError
from worker_vl.backends.base import Backend, VLItem, VLOutput

BACKENDS: dict[str, str] = {"qwen": "worker_vl.backends.qwen:QwenVLBackend"}

__all__ = ["BACKENDS", "Backend", "VLItem", "VLOutput", "get_backend"]


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Build the backend registered as ``name`` with ``kwargs`` (weights are not loaded yet)."""
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"vl.backend: unknown backend {name!r}; allowed: {sorted(BACKENDS)}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(**kwargs)
    return backend
