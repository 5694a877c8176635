"""InstructPix2Pix (``StableDiffusionInstructPix2PixPipeline``) behind the edit backend protocol.

Text-only editor: garment images are ignored (and logged once per batch). Items that share an
output resolution run together, up to ``max_batch`` per pipeline call; each item has its own
generator seeded with ``item.seed``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from common.core.errors import ConfigError
from common.runtime.devices import load_pipeline
from worker_edit.backends import MIN_STEPS, SCHEDULERS
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

#: Scheduler names accepted by ``scheduler=`` -> diffusers class name.

#: Sides of InstructPix2Pix outputs are multiples of this (the SD VAE downsamples by 8).
SIDE_MULTIPLE = 8


class InstructPix2PixBackend(PipelineBackend):
    """Instruction-driven editing with a Stable Diffusion InstructPix2Pix checkpoint.

    ``model`` is a hub id (resolved from the local cache; nothing is downloaded when the
    environment is offline) or a local directory written by ``save_pretrained``.
    """

    name = "instruct-pix2pix"
    side_multiple = SIDE_MULTIPLE

    def __init__(
        self,
        model: str = "timbrooks/instruct-pix2pix",
        steps: int = 20,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        scheduler: str = "euler_ancestral",
        max_side: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 4,
        adapter: str | None = None,
    ) -> None:
        if scheduler not in SCHEDULERS:
            allowed = ", ".join(SCHEDULERS)
            raise ConfigError(f"scheduler {scheduler!r} is not supported; allowed: {allowed}")
        if steps < MIN_STEPS.get(scheduler, 1):
            raise ConfigError(f"steps must be >= {MIN_STEPS.get(scheduler, 1)} with scheduler {scheduler} (got {steps})")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1 (got {max_batch})")
        if max_side < SIDE_MULTIPLE:
            raise ConfigError(f"max_side must be >= {SIDE_MULTIPLE} (got {max_side})")
        self.model = str(model)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.scheduler = scheduler
        self.max_side = int(max_side)
        self.device = device
        self.dtype = dtype
        self.max_batch = int(max_batch)
        self.adapter = adapter  # a folder holding a LoRA of the UNet (diffusers format), or None
        super().__init__()

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Load the pipeline once; later calls return at once."""
        with self._lock:
            if self.pipe is not None:
                return
            import diffusers
            from diffusers import StableDiffusionInstructPix2PixPipeline

            pipe, self._device, self._dtype = load_pipeline(
                StableDiffusionInstructPix2PixPipeline, self.model, what="InstructPix2Pix",
                setting="edit_model (SYNTHPIPE_EDIT_MODEL)", device=self.device, dtype=self.dtype,
                lora=self.adapter or None, safety_checker=None, requires_safety_checker=False)
            scheduler_cls = getattr(diffusers, SCHEDULERS[self.scheduler])
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
            self.pipe = pipe

    def params(self) -> dict[str, Any]:
        """Everything that decides an output besides the item itself (for provenance)."""
        return {
            "backend": self.name,
            "model": self.model,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
            "scheduler": self.scheduler,
            "scheduler_class": SCHEDULERS[self.scheduler],
            "max_side": self.max_side,
            "max_batch": self.max_batch,
            "adapter": self.adapter,
            "generator": "torch.Generator(cpu).manual_seed(item.seed), one per item",
            **self.runtime_params(),
        }

    # ------------------------------------------------------------------ inference

    def run_batch(self, items: list[EditItem]) -> list[EditOutput]:
        """Edit ``items``; one output per item, in order. Loads the model on first use."""
        self.load()
        outputs, runnable = screen_items(items, "instruct-pix2pix")
        if any(items[i].garments for i in runnable):
            logger.info("instruct-pix2pix ignores garment images (text-only editor)")
        sizes = {i: self.output_size(items[i].image) for i in runnable}
        groups = [
            [runnable[j] for j in chunk]
            for same_size in group_indices([sizes[i] for i in runnable])
            for chunk in chunked(same_size, self.max_batch)
        ]

        def call(indices: list[int]) -> list[np.ndarray]:
            return self._call_pipeline([items[i] for i in indices], sizes[indices[0]])

        run_groups(items, groups, call, outputs, "instruct-pix2pix")
        return finish_outputs(outputs)

    def _call_pipeline(self, batch: list[EditItem], size: tuple[int, int]) -> list[np.ndarray]:
        """One pipeline call for items that share the output ``size``; float HWC arrays."""
        images = [item.image.convert("RGB").resize(size, Image.Resampling.LANCZOS) for item in batch]
        result = self.pipe(
            prompt=[item.prompt for item in batch],
            image=images,
            negative_prompt=[item.negative_prompt or "" for item in batch],
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            generator=[seeded_generator(item.seed) for item in batch],
            output_type="np",
        )
        return [np.asarray(image, dtype=np.float32) for image in result.images]
