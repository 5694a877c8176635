"""Model residency: one loaded backend per stage and process, kept between batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class ResidentModels:
    """Holds loaded backends by key. Asking for a key not held unloads the others first when
    ``exclusive`` (one model on the card at a time), then loads the new one."""

    def __init__(self, name: str, *, exclusive: bool = True) -> None:
        self.name = name
        self.exclusive = exclusive
        self._held: dict[Hashable, Any] = {}
        self.load_seconds: dict[Hashable, float] = {}

    def get(self, key: Hashable, factory: Callable[[], Any], label: str = "") -> Any:
        backend = self._held.get(key)
        if backend is not None:
            return backend
        if self.exclusive:
            self.clear()
        backend = factory()
        started = time.perf_counter()
        backend.load()
        self.load_seconds[key] = time.perf_counter() - started
        log.info("%s: loaded %s in %.1f s", self.name, label or key, self.load_seconds[key])
        self._held[key] = backend
        return backend

    def clear(self) -> None:
        for backend in self._held.values():
            backend.unload()
        self._held.clear()
