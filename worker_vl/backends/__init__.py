"""VL backends. Their names are registered in ``common.core.backends.VL_BACKENDS``; a backend's
module (torch, transformers, requests) is imported only when it is asked for."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from common.core.backends import SERVED_VL_BACKENDS, load_backend
from common.runtime.resident import REMOTE, on_device
from worker_vl.backends.base import Backend, VLItem, VLOutput

if TYPE_CHECKING:
    from common.core.settings import Settings

__all__ = ["Backend", "VLItem", "VLOutput", "get_backend", "resident_backend_for"]


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Build the backend registered as ``name`` with ``kwargs`` (weights are not loaded yet)."""
    backend: Backend = load_backend("vl", name, **kwargs)
    return backend


def resident_backend_for(name: str, options: dict[str, Any], settings: Settings | None = None) -> Backend:
    """The process's loaded backend ``name`` with ``options`` (loaded on first use, then kept): the
    VL stage and the judge get the same one when their options match. A served backend holds no
    device, so it lives in the ``remote`` manager and unloads nothing on a card."""
    device = REMOTE if name in SERVED_VL_BACKENDS else str(options.get("device", "auto"))
    key = (name, json.dumps(options, sort_keys=True, default=str))
    backend: Backend = on_device(device, settings).get(key, lambda: get_backend(name, **options),
                                                       label=f"{name} {options['model']}")
    return backend
