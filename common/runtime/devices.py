"""Device and dtype names from settings to what a model is put on, and the one way a diffusers
pipeline is loaded onto them.

Devices: ``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``. A device this machine does not have
is a settings error, found before any weight is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from common.core.errors import ConfigError, model_load_error

log = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


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


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for ``dtype`` on ``device``.

    ``"auto"``: float32 on CPU (half-precision convolutions are slow or missing there);
    bfloat16 on CUDA when the GPU supports it, else float16. bfloat16 is preferred because it
    has float32's exponent range: the diffusion VAEs overflow in float16 now and then, which
    shows up as NaN or black images; bfloat16 costs no speed on Ampere and newer GPUs.
    """
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return getattr(torch, _DTYPE_NAMES[dtype])
    except KeyError:
        allowed = ", ".join(["auto", *sorted(_DTYPE_NAMES)])
        raise ConfigError(f"dtype {dtype!r} is not supported; allowed: {allowed}") from None


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for provenance records)."""
    return str(dtype).removeprefix("torch.")


def load_pipeline(pipeline_cls: Any, source: str, *, what: str, setting: str, device: str, dtype: str,
                  model: str | None = None, lora: str | None = None, adapter_name: str | None = None,
                  lora_scale: float = 1.0, cpu_offload: bool = False, **kwargs: Any) -> tuple[Any, str, Any]:
    """Load a diffusers pipeline from ``source`` (hub id or folder) onto ``device`` in ``dtype``.

    ``setting`` names the setting to fix when nothing loads there (a settings error: retrying
    cannot find a model that is not there); ``model`` is the name in messages (default
    ``source``). ``lora``: a LoRA folder loaded under ``adapter_name`` at ``lora_scale``; one
    that does not fit the model is a settings error too. ``cpu_offload`` on a card moves each
    part to it only while it runs. Returns the pipeline, the device and the torch dtype.
    """
    name = model or source
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    log.info("loading %s %s on %s (%s)", what, name, device, dtype_name(torch_dtype))
    try:
        pipe = pipeline_cls.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise model_load_error(name, exc, setting) from exc
    if lora is not None:
        try:
            pipe.load_lora_weights(lora, adapter_name=adapter_name)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"LoRA {lora} does not fit {name}: {exc}", code="model.adapter_mismatch") from exc
        if adapter_name is not None:
            pipe.set_adapters([adapter_name], [lora_scale])
    if cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, device, torch_dtype
