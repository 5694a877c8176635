"""Model residency: one manager per device holds the loaded backends of every model stage.

Backends are kept between batches by key (backend name + every option that changes the model,
adapter included). With ``exclusive`` on, asking for a key that is not held unloads everything
else on that device first: on one card, a local run unloads the VL model before it loads the
editor (Qwen2.5-VL-7B and Qwen-Image-Edit do not fit one 48 or 80 GB card together). Stages
that share a model (the VLM judge and the VL stage, same id and options) get the same backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from common.observability import metrics

if TYPE_CHECKING:
    from common.core.settings import Settings

log = logging.getLogger(__name__)


class ResidentModels:
    """Loaded backends on one device, by key."""

    def __init__(self, name: str, *, exclusive: bool = True) -> None:
        self.name = name
        self.exclusive = exclusive
        self._held: dict[Hashable, Any] = {}
        self._lock = threading.RLock()
        self.load_seconds: dict[Hashable, float] = {}
        #: ("load" | "unload", label) in order: what the device held over time
        self.events: list[tuple[str, str]] = []
        self._labels: dict[Hashable, str] = {}

    def get(self, key: Hashable, factory: Callable[[], Any], label: str = "") -> Any:
        with self._lock:
            backend = self._held.get(key)
            if backend is not None:
                return backend
            if self.exclusive:
                self.clear()
            backend = factory()
            started = time.perf_counter()
            backend.load()
            self.load_seconds[key] = time.perf_counter() - started
            self._labels[key] = label or str(key)
            self.events.append(("load", self._labels[key]))
            metrics.model_loaded(self._labels[key], self.load_seconds[key])
            log.info("%s: loaded %s in %.1f s", self.name, self._labels[key], self.load_seconds[key])
            self._held[key] = backend
            return backend

    def held(self) -> list[str]:
        """Labels of the backends loaded now."""
        with self._lock:
            return [self._labels[k] for k in self._held]

    def clear(self) -> None:
        with self._lock:
            for key, backend in self._held.items():
                backend.unload()
                self.events.append(("unload", self._labels.get(key, str(key))))
                log.info("%s: unloaded %s", self.name, self._labels.get(key, key))
            self._held.clear()


_DEVICES: dict[str, ResidentModels] = {}
#: the "device" of backends served elsewhere (an HTTP client and its connections)
REMOTE = "remote"
_DEVICES_LOCK = threading.Lock()


def device_key(device: str) -> str:
    """The physical device a device setting lands on (``auto``/``cuda`` -> ``cuda:0`` when a GPU
    is visible, else ``cpu``), so two stages on the same card share one manager."""
    if device in ("cpu", "mps", REMOTE) or device.startswith("cuda:"):
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def exclusive_default(device: str, settings: Settings | None) -> bool:
    """``models.exclusive_per_device`` when set; otherwise on for a card when the process sees one
    card (models compete for its memory), off on CPU."""
    if device == REMOTE:  # clients of a server share no memory with anything
        return False
    choice = settings.models.exclusive_per_device if settings is not None else None
    if choice is not None:
        return choice
    if not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.device_count() <= 1


def on_device(device: str, settings: Settings | None = None) -> ResidentModels:
    """The process's residency manager for the device that ``device`` (a setting) lands on."""
    key = device_key(device)
    with _DEVICES_LOCK:
        manager = _DEVICES.get(key)
        if manager is None:
            manager = _DEVICES[key] = ResidentModels(f"models on {key}", exclusive=exclusive_default(key, settings))
        elif key != REMOTE and settings is not None and settings.models.exclusive_per_device is not None:
            manager.exclusive = settings.models.exclusive_per_device
        return manager


def all_managers() -> dict[str, ResidentModels]:
    with _DEVICES_LOCK:
        return dict(_DEVICES)


def clear_all() -> None:
    """Unload every model of this process (tests, shutdown)."""
    for manager in all_managers().values():
        manager.clear()
