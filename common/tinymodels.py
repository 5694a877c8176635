"""Tiny random-weight checkpoints of the real architectures, for tests and the offline demo."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# name -> builder ("module:function"); each writes a checkpoint that loads through the same
# from_pretrained path as a real model.
BUILDERS = {
    "vl": "worker_vl.tiny:build_tiny_vl",
    "edit": "worker_edit.tiny:build_tiny_instruct_pix2pix",
    "edit-plus": "worker_edit.tiny:build_tiny_qwen_image_edit_plus",
}


def build_one(name: str, out_dir: Path) -> Path:
    """Write checkpoint ``name`` to ``out_dir/name`` unless a complete one is there."""
    target = out_dir / name
    if (target / ".complete").is_file():
        return target
    module, _, func = BUILDERS[name].partition(":")
    log.info("building tiny %s checkpoint in %s", name, target)
    path = Path(getattr(importlib.import_module(module), func)(target))
    (path / ".complete").write_text("ok\n")
    return path


def build_all(out_dir: Path) -> dict[str, Path]:
    """Write ``out_dir/vl`` (Qwen2.5-VL), ``out_dir/edit`` (InstructPix2Pix) and
    ``out_dir/edit-plus`` (Qwen-Image-Edit Plus); returns the folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: build_one(name, out_dir) for name in BUILDERS}
