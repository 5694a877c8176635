"""Device names from settings (``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``) to the device a
model is put on. A device this machine does not have is a settings error, found before any
weight is loaded."""

from __future__ import annotations

from common.errors import ConfigError


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other names are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but no CUDA device is visible; use 'cpu' or 'auto'")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but MPS is not available; use 'cpu' or 'auto'")
    return device
