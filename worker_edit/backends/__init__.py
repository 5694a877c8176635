"""Registry of edit backends, chosen by name.

Backend modules import torch and diffusers, so they are imported only when a backend is asked
for: importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.errors import ConfigError

#: Backend name -> "module:Class".
BACKENDS: dict[str, str] = {
    "instruct-pix2pix": "worker_edit.backends.instruct_pix2pix:InstructPix2PixBackend",
    "qwen-image-edit-plus": "worker_edit.backends.qwen_image_edit:QwenImageEditPlusBackend",
}

#: InstructPix2Pix scheduler name (``edit.scheduler``) -> diffusers class name.
SCHEDULERS: dict[str, str] = {
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver_multistep": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
#: Fewest steps a scheduler can run (PNDM's linear multistep needs four past steps).
MIN_STEPS: dict[str, int] = {"pndm": 4}


def get_backend(name: str, **kwargs: Any) -> Any:
    """Construct the backend registered as ``name`` with ``kwargs`` (weights are not loaded yet).

    Raises ``ConfigError`` for an unknown name.
    """
    try:
        target = BACKENDS[name]
    except KeyError:
        allowed = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"edit backend {name!r} is unknown; allowed: {allowed}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kwargs)


__all__ = ["BACKENDS", "MIN_STEPS", "SCHEDULERS", "get_backend"]
