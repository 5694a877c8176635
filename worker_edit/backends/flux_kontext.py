"""FLUX.1 Kontext (``FluxKontextPipeline``) behind the edit backend protocol.

A text-guided editor of one reference image (garment photos are ignored). Items that share an
output resolution run together, up to ``max_batch`` per pipeline call, each with its own
generator seeded with ``item.seed``. The reference image is resized to the output size and the
pipeline's area fitting is pinned to it (``max_area = width * height``), so the output has the
size :meth:`output_size` promises; ``auto_resize`` instead lets the pipeline snap the reference
to Kontext's preferred training resolutions (about one megapixel).

A LoRA adapter (``lora_path``, or ``adapter`` as the edit service passes it: a folder written
by ``save_lora_weights``, e.g. a synthpipe character adapter) is loaded into the transformer
when given; its path and scale are recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.core.errors import ConfigError
from common.runtime.devices import load_pipeline
from worker_edit.backends.base import (
    EditItem,
    EditOutput,
    PipelineBackend,
    chunked,
    finish_outputs,
    group_indices,
    run_groups,
    screen_items,
    seeded_generator,
)

logger = logging.getLogger(__name__)

#: Output sides are multiples of this (the VAE downsamples 8x, latents are packed 2x2).
SIDE_MULTIPLE = 16
#: Negative prompt used when true CFG is on and an item has none.
DEFAULT_NEGATIVE_PROMPT = " "
ADAPTER_NAME = "synthpipe"


class FluxKontextBackend(PipelineBackend):
    """Instruction editing with FLUX.1 Kontext (dev by default).

    ``guidance_scale`` is the distilled guidance embedded in the transformer (Kontext-dev's
    reference value is 2.5); ``true_cfg_scale`` above 1 adds real classifier-free guidance with
    the negative prompt, at twice the cost per step.
    """

    name = "flux-kontext"
    side_multiple = SIDE_MULTIPLE

    def __init__(
        self,
        model: str = "black-forest-labs/FLUX.1-Kontext-dev",
        steps: int = 28,
        guidance_scale: float = 2.5,
        true_cfg_scale: float = 1.0,
        max_side: int = 1024,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 4,
        max_sequence_length: int = 512,
        auto_resize: bool = False,
        lora_path: str | Path | None = None,
        lora_scale: float = 1.0,
        cpu_offload: bool = False,
        adapter: str | Path | None = None,
    ) -> None:
        if adapter is not None and lora_path is not None and str(adapter) != str(lora_path):
            raise ConfigError("flux-kontext: give either edit.kontext_lora_path or an adapter, not both")
        lora_path = lora_path if lora_path is not None else adapter
        if steps < 1:
            raise ConfigError(f"steps must be >= 1 (got {steps})")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1 (got {max_batch})")
        if max_side < SIDE_MULTIPLE:
            raise ConfigError(f"max_side must be >= {SIDE_MULTIPLE} (got {max_side})")
        if not 1 <= max_sequence_length <= 512:
            raise ConfigError(f"max_sequence_length must be in [1, 512] (got {max_sequence_length})")
        if lora_path is not None and not (Path(lora_path) / "pytorch_lora_weights.safetensors").is_file():
            raise ConfigError(f"lora_path {lora_path}: no pytorch_lora_weights.safetensors there; give a folder "
                              "written by save_lora_weights (a synthpipe adapter's folder)")
        self.model = str(model)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.true_cfg_scale = float(true_cfg_scale)
        self.max_side = int(max_side)
        self.device = device
        self.dtype = dtype
        self.max_batch = int(max_batch)
        self.max_sequence_length = int(max_sequence_length)
        self.auto_resize = bool(auto_resize)
        self.lora_path = str(lora_path) if lora_path is not None else None
        self.lora_scale = float(lora_scale)
        self.cpu_offload = bool(cpu_offload)
        super().__init__()

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Load the pipeline (and the LoRA, if any) once; later calls return at once."""
        with self._lock:
            if self.pipe is not None:
                return
            from diffusers import FluxKontextPipeline

            self.pipe, self._device, self._dtype = load_pipeline(
                FluxKontextPipeline, self.model, what="FLUX.1 Kontext",
                setting="edit.kontext_model (SYNTHPIPE_EDIT__KONTEXT_MODEL)", device=self.device, dtype=self.dtype,
                lora=self.lora_path, adapter_name=ADAPTER_NAME, lora_scale=self.lora_scale,
                cpu_offload=self.cpu_offload)

    def params(self) -> dict[str, Any]:
        """Everything that decides an output besides the item itself (for provenance)."""
        return {
            "backend": self.name,
            "model": self.model,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "guidance": "distilled guidance embedding",
            "true_cfg_scale": self.true_cfg_scale,
            "scheduler": "flow_match_euler",
            "max_side": self.max_side,
            "max_batch": self.max_batch,
            "max_sequence_length": self.max_sequence_length,
            "auto_resize": self.auto_resize,
            "lora_path": self.lora_path,
            "lora_scale": self.lora_scale if self.lora_path else None,
            "cpu_offload": self.cpu_offload,
            "generator": "torch.Generator(cpu).manual_seed(item.seed), one per item",
            **self.runtime_params(),
        }

    # ------------------------------------------------------------------ inference

    def run_batch(self, items: list[EditItem]) -> list[EditOutput]:
        """Edit ``items``; one output per item, in order. Loads the model on first use."""
        self.load()
        outputs, runnable = screen_items(items, self.name)
        if any(items[i].garments for i in runnable):
            logger.info("flux-kontext edits the first image only; garment images are ignored")
        sizes = {i: self.output_size(items[i].image) for i in runnable}
        groups = [
            [runnable[j] for j in chunk]
            for same_size in group_indices([sizes[i] for i in runnable])
            for chunk in chunked(same_size, self.max_batch)
        ]

        def call(indices: list[int]) -> list[np.ndarray]:
            return self._call_pipeline([items[i] for i in indices], sizes[indices[0]])

        run_groups(items, groups, call, outputs, self.name)
        return finish_outputs(outputs)

    def _call_pipeline(self, batch: list[EditItem], size: tuple[int, int]) -> list[np.ndarray]:
        """One pipeline call for items that share the output ``size``; float HWC arrays."""
        width, height = size
        images = [item.image.convert("RGB").resize(size, Image.Resampling.LANCZOS) for item in batch]
        extra: dict[str, Any] = {}
        if self.true_cfg_scale > 1.0:
            extra = {"true_cfg_scale": self.true_cfg_scale,
                     "negative_prompt": [item.negative_prompt or DEFAULT_NEGATIVE_PROMPT for item in batch]}
        result = self.pipe(
            image=images,
            prompt=[item.prompt for item in batch],
            height=height,
            width=width,
            max_area=width * height,
            _auto_resize=self.auto_resize,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            max_sequence_length=self.max_sequence_length,
            generator=[seeded_generator(item.seed) for item in batch],
            output_type="np",
            **extra,
        )
        return [np.asarray(image, dtype=np.float32) for image in result.images]
