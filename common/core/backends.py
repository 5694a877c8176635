"""Backend names, registered in ``common`` so settings can check them without importing a worker.

Each registry maps a name to ``"module:Class"``; the class is imported only by the worker
that runs it (:func:`load_backend`). Settings validate names against these dictionaries, so a
typo fails at start-up with the allowed names, and ``common`` never imports model code.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.core.errors import ConfigError

#: VL backends (``vl.backend``)
VL_BACKENDS: dict[str, str] = {"qwen": "worker_vl.backends.qwen:QwenVLBackend"}

#: edit backends (``edit.backend``, ``edit.backend_tryon``, ``edit.backend_enrich``)
EDIT_BACKENDS: dict[str, str] = {
    "instruct-pix2pix": "worker_edit.backends.instruct_pix2pix:InstructPix2PixBackend",
    "qwen-image-edit-plus": "worker_edit.backends.qwen_image_edit:QwenImageEditPlusBackend",
    "flux-kontext": "worker_edit.backends.flux_kontext:FluxKontextBackend",
}
#: edit backends that take the garment photos besides the person photo
MULTI_IMAGE_EDIT_BACKENDS = frozenset({"qwen-image-edit-plus"})

#: InstructPix2Pix scheduler name (``edit.scheduler``) -> diffusers class name
SCHEDULERS: dict[str, str] = {
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpmsolver_multistep": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
#: fewest steps a scheduler can run (PNDM's linear multistep needs four past steps)
MIN_STEPS: dict[str, int] = {"pndm": 4}

#: scorer backends of the score stage (``score.scorers``)
SCORERS: dict[str, str] = {
    "change": "worker_score.backends.change:ChangeScorer",
    "identity": "worker_score.backends.identity:IdentityScorer",
    "clip": "worker_score.backends.clip:ClipScorer",
    "dino": "worker_score.backends.dino:DinoScorer",
    "garment": "worker_score.backends.garment:GarmentScorer",
    # the VLM judge runs on the VL backend, so it lives with it
    "judge": "worker_vl.judge:VLJudgeScorer",
}

#: text-to-image backends of the generate stage
GENERATE_BACKENDS: dict[str, str] = {"flux": "worker_generate.backends.flux:FluxBackend"}

_KINDS = {"vl": VL_BACKENDS, "edit": EDIT_BACKENDS, "scorer": SCORERS, "generate": GENERATE_BACKENDS}


def load_backend(kind: str, name: str, **kwargs: Any) -> Any:
    """Construct backend ``name`` of ``kind`` (``vl``, ``edit``, ``scorer``) with ``kwargs``;
    weights are not loaded yet. An unknown name is a ``ConfigError`` naming the allowed ones."""
    registry = _KINDS[kind]
    target = registry.get(name)
    if target is None:
        raise ConfigError(f"{kind} backend {name!r} is unknown; allowed: {', '.join(sorted(registry))}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kwargs)
