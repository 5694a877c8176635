"""Tiny random-weight checkpoints of the real architectures, for tests and the offline demo.

Each entry names its builder (``"module:function"``, imported only when it runs) and the
setting that selects the checkpoint, so ``synthpipe models tiny`` can print what to export.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyModel:
    name: str  # folder under OUT_DIR
    builder: str  # "module:function(target: Path) -> Path"; writes a from_pretrained checkpoint
    setting: str  # the SYNTHPIPE_* variable that selects it


TINY_MODELS: tuple[TinyModel, ...] = (
    TinyModel("vl", "worker_vl.tiny:build_tiny_vl", "SYNTHPIPE_VL_MODEL"),
    # the same architecture with 32-wide heads, which vLLM's CPU attention takes: the model a test
    # or benchmark serves (`vllm serve DIR` names it DIR, the openai backend's default model name)
    TinyModel("vl-served", "worker_vl.tiny:build_tiny_vl_served", "SYNTHPIPE_VL__OPENAI__MODEL"),
    TinyModel("edit", "worker_edit.tiny:build_tiny_instruct_pix2pix", "SYNTHPIPE_EDIT_MODEL"),
    TinyModel("edit-plus", "worker_edit.tiny:build_tiny_qwen_image_edit_plus", "SYNTHPIPE_EDIT__PLUS_MODEL"),
    TinyModel("clip", "worker_score.tiny:build_tiny_clip", "SYNTHPIPE_SCORE__CLIP_MODEL"),
    TinyModel("dino", "worker_score.tiny:build_tiny_dinov2", "SYNTHPIPE_SCORE__DINO_MODEL"),
    TinyModel("flux-kontext", "worker_edit.tiny:build_tiny_flux_kontext", "SYNTHPIPE_EDIT__KONTEXT_MODEL"),
    TinyModel("flux", "worker_edit.tiny:build_tiny_flux", "SYNTHPIPE_GENERATE__MODEL"),
)


def build_one(name: str, out_dir: Path) -> Path:
    """Write checkpoint ``name`` to ``out_dir/name`` unless a complete one is there."""
    entry = {t.name: t for t in TINY_MODELS}[name]
    target = out_dir / name
    if (target / ".complete").is_file():
        return target
    module, _, func = entry.builder.partition(":")
    log.info("building tiny %s checkpoint in %s", name, target)
    path = Path(getattr(importlib.import_module(module), func)(target))
    (path / ".complete").write_text("ok\n")
    return path


def build_all(out_dir: Path) -> dict[str, Path]:
    """Write one folder per entry of :data:`TINY_MODELS` under ``out_dir``; returns the folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {t.name: build_one(t.name, out_dir) for t in TINY_MODELS}


def tiny_run_settings() -> dict[str, str]:
    """Settings that suit tiny random models (small images, few steps) on a CPU."""
    return {
        "SYNTHPIPE_VL__MIN_PIXELS": str(4 * 28 * 28),
        "SYNTHPIPE_VL__MAX_PIXELS": str(16 * 28 * 28),
        "SYNTHPIPE_VL__MAX_NEW_TOKENS": "2048",
        "SYNTHPIPE_EDIT__STEPS": "2",
        "SYNTHPIPE_EDIT__PLUS_STEPS": "2",
        "SYNTHPIPE_EDIT__MAX_SIDE": "64",
        "SYNTHPIPE_EDIT__PLUS_VAE_IMAGE_AREA": str(128 * 128),
        "SYNTHPIPE_EDIT__PLUS_CONDITION_IMAGE_AREA": str(112 * 112),
        "SYNTHPIPE_EDIT__KONTEXT_STEPS": "2",
        "SYNTHPIPE_EDIT__KONTEXT_MAX_SEQUENCE_LENGTH": "32",
        "SYNTHPIPE_GENERATE__STEPS": "2",
        "SYNTHPIPE_GENERATE__WIDTH": "64",
        "SYNTHPIPE_GENERATE__HEIGHT": "64",
        "SYNTHPIPE_GENERATE__MAX_SEQUENCE_LENGTH": "32",
    }


def settings_for(written: dict[str, Path]) -> dict[str, str]:
    """The variables that select the checkpoints in ``written``, plus :func:`tiny_run_settings`."""
    by_name = {t.name: t for t in TINY_MODELS}
    return {**{by_name[n].setting: str(p) for n, p in written.items() if n in by_name}, **tiny_run_settings()}


def multi_image_settings() -> dict[str, str]:
    """The settings that send try-on sets to the multi-image editor (person + garment photos)."""
    return {"SYNTHPIPE_EDIT__BACKEND_TRYON": "qwen-image-edit-plus", "SYNTHPIPE_PAIRING__MAX_GARMENTS": "2"}
