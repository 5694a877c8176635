"""Backend names, registered in ``common`` so settings can check them without importing a worker.

Each registry maps a name to ``"module:Class"``; the class is imported only by the worker
that runs it (:func:`load_backend`). Settings validate names against these dictionaries, so a
typo fails at start-up with the allowed names, and ``common`` never imports model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from common.core.errors import ConfigError

if TYPE_CHECKING:
    from common.core.settings import Settings

#: VL backends (``vl.backend``)
VL_BACKENDS: dict[str, str] = {
    "qwen": "worker_vl.backends.qwen:QwenVLBackend",
    "openai": "worker_vl.backends.openai_compat:OpenAIVLBackend",
}
#: VL backends that call a model server: they hold no device (``common.runtime.resident.REMOTE``)
SERVED_VL_BACKENDS = frozenset({"openai"})

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


def vl_backend_options(settings: Settings, model: str | None = None) -> dict[str, Any]:
    """The options ``vl.backend`` is built with (the VL stage's, and the judge's with its own
    ``model``): recorded with every analysis, so nothing secret goes in (the API key stays in the
    variable or file these options name)."""
    vl = settings.vl
    shaping = {"max_new_tokens": vl.max_new_tokens, "temperature": vl.temperature, "top_p": vl.top_p}
    if vl.backend in SERVED_VL_BACKENDS:
        o = vl.openai
        return {"model": model or o.model or settings.vl_model, "base_url": o.base_url,
                "api_key_env": o.api_key_env, "api_key_file": str(o.api_key_file) if o.api_key_file else None,
                "timeout_s": o.timeout_s, "connect_timeout_s": o.connect_timeout_s, "max_in_flight": o.max_in_flight,
                "max_retries": o.max_retries, "backoff_base_s": o.backoff_base_s, "backoff_max_s": o.backoff_max_s,
                "extra_body": dict(o.extra_body), **shaping}
    return {"model": model or settings.vl_model, "device": vl.device, "dtype": vl.dtype,
            "quantization": None if vl.quantization == "none" else vl.quantization,
            "min_pixels": vl.min_pixels, "max_pixels": vl.max_pixels, **shaping}
