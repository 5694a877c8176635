"""Qwen-Image-Edit Plus (``QwenImageEditPlusPipeline``) behind the edit backend protocol.

The person image and the garment images go into one pipeline call as the image list
``[person, *garments]`` ("Picture 1", "Picture 2", ... in the prompt). diffusers 0.42's
pipeline accepts one prompt per call, so a batch runs item by item.

The pipeline's ``processor`` is a ``Qwen2VLProcessor``. In transformers 5.x that class also
builds a video processor, which needs torchvision (not installable on CPU-only hosts). The
backend therefore builds an image-only processor itself (``image_only_processor``: the PIL
image processor + the tokenizer, no video part) from the checkpoint's ``processor/`` folder
and hands it to ``from_pretrained``; the pipeline only ever passes images and text to it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.core.errors import ConfigError, model_load_error
from common.runtime.devices import load_pipeline
from worker_edit.backends.base import (
    EditItem,
    EditOutput,
    PipelineBackend,
    finish_outputs,
    run_groups,
    screen_items,
    seeded_generator,
)

logger = logging.getLogger(__name__)

#: Output sides are multiples of this (VAE downsamples 8x, latents are packed 2x2).
SIDE_MULTIPLE = 16
#: Negative prompt used when an item has none: true CFG needs one (the reference examples
#: pass a single space).
DEFAULT_NEGATIVE_PROMPT = " "
SCHEDULERS = ("flow_match_euler",)

# The pipeline reads these module globals on every call; overriding them is serialised.
_AREA_LOCK = threading.Lock()


@functools.cache
def _image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """``Qwen2VLProcessor`` without the video sub-processor (no torchvision needed).

        ``ProcessorMixin`` derives the sub-processors from ``__init__``'s parameters, so
        leaving ``video_processor`` out of the signature removes it everywhere.
        """

        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


def image_only_processor(processor_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Any:
    """An image-only Qwen2-VL processor from a checkpoint's ``processor/`` folder.

    Reads ``preprocessor_config.json`` (or ``processor_config.json``) with the PIL image
    processor and the tokenizer from ``tokenizer_dir`` (default: ``processor_dir``).
    """
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    processor_dir = Path(processor_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else processor_dir
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(processor_dir))
    tokenizer = Qwen2Tokenizer.from_pretrained(str(tok_dir))
    cls = _image_only_processor_class()
    return cls(image_processor=image_processor, tokenizer=tokenizer,
               chat_template=getattr(tokenizer, "chat_template", None))


@contextlib.contextmanager
def _reference_areas(module: Any, vae_area: int | None, condition_area: int | None) -> Iterator[None]:
    """Temporarily set the pipeline module's reference-image areas (pixels)."""
    if vae_area is None and condition_area is None:
        yield
        return
    with _AREA_LOCK:
        saved = (module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE)
        try:
            if vae_area is not None:
                module.VAE_IMAGE_SIZE = vae_area
            if condition_area is not None:
                module.CONDITION_IMAGE_SIZE = condition_area
            yield
        finally:
            module.VAE_IMAGE_SIZE, module.CONDITION_IMAGE_SIZE = saved


class QwenImageEditPlusBackend(PipelineBackend):
    """Multi-image editing (person + garments) with Qwen-Image-Edit Plus (2509 and later).

    ``guidance_scale`` is the pipeline's ``true_cfg_scale``. ``vae_image_area`` and
    ``condition_image_area`` override the area (in pixels) the pipeline resizes reference
    images to for the VAE (native 1024*1024) and for the text encoder (native 384*384);
    ``None`` keeps the native value (settings ``edit.plus_vae_image_area`` /
    ``edit.plus_condition_image_area``).
    ``max_batch`` is accepted for a uniform stage configuration and recorded, but diffusers
    0.42's pipeline takes one prompt per call, so items always run one call each.
    """

    name = "qwen-image-edit-plus"
    side_multiple = SIDE_MULTIPLE

    def __init__(
        self,
        model: str = "Qwen/Qwen-Image-Edit-2509",
        steps: int = 40,
        guidance_scale: float = 4.0,
        scheduler: str = "flow_match_euler",
        max_side: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        max_garments: int = 2,
        vae_image_area: int | None = None,
        condition_image_area: int | None = None,
        cpu_offload: bool = False,
        max_batch: int = 1,
        adapter: str | None = None,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {scheduler!r} is not supported; allowed: {', '.join(SCHEDULERS)}")
        if steps < 1:
            raise ConfigError(f"steps must be >= 1 (got {steps})")
        if max_side < SIDE_MULTIPLE:
            raise ConfigError(f"max_side must be >= {SIDE_MULTIPLE} (got {max_side})")
        for key, area in (("vae_image_area", vae_image_area), ("condition_image_area", condition_image_area)):
            if area is not None and area < 32 * 32:
                raise ConfigError(f"{key} must be >= 1024 pixels or None (got {area})")
        self.model = str(model)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.scheduler = scheduler
        self.max_side = int(max_side)
        self.device = device
        self.dtype = dtype
        self.max_garments = int(max_garments)
        self.vae_image_area = vae_image_area
        self.condition_image_area = condition_image_area
        self.cpu_offload = bool(cpu_offload)
        self.max_batch = int(max_batch)
        self.adapter = adapter  # a folder holding a LoRA of the transformer (train edit-plus), or None
        super().__init__()
        self._module: Any = None
        self._areas: tuple[int | None, int | None] = (vae_image_area, condition_image_area)

    # ------------------------------------------------------------------ lifecycle

    def _checkpoint_dir(self) -> Path:
        if Path(self.model).is_dir():
            return Path(self.model)
        from diffusers import QwenImageEditPlusPipeline

        try:  # resolves from the local cache when offline; downloads only when allowed
            return Path(QwenImageEditPlusPipeline.download(self.model))
        except Exception as exc:
            raise model_load_error(self.model, exc, "edit.plus_model (SYNTHPIPE_EDIT__PLUS_MODEL)") from exc

    def load(self) -> None:
        """Load the pipeline once; later calls return at once."""
        with self._lock:
            if self.pipe is not None:
                return
            import importlib

            from diffusers import QwenImageEditPlusPipeline

            root = self._checkpoint_dir()
            self._areas = (self.vae_image_area, self.condition_image_area)
            tok_dir = root / "processor" if (root / "processor" / "tokenizer_config.json").exists() \
                else root / "tokenizer"
            setting = "edit.plus_model (SYNTHPIPE_EDIT__PLUS_MODEL)"
            try:
                processor = image_only_processor(root / "processor", tok_dir)
            except (OSError, ValueError) as exc:
                raise model_load_error(self.model, exc, setting) from exc
            pipe, device, dtype = load_pipeline(
                QwenImageEditPlusPipeline, str(root), model=self.model, what="Qwen-Image-Edit Plus", setting=setting,
                device=self.device, dtype=self.dtype, lora=self.adapter or None, cpu_offload=self.cpu_offload,
                processor=processor)
            self._module = importlib.import_module(type(pipe).__call__.__module__)
            if not all(hasattr(self._module, n) for n in ("VAE_IMAGE_SIZE", "CONDITION_IMAGE_SIZE")) \
                    and any(a is not None for a in self._areas):
                raise ConfigError("this diffusers version has no VAE_IMAGE_SIZE/CONDITION_IMAGE_SIZE; "
                                  "leave vae_image_area and condition_image_area unset")
            self.pipe, self._device, self._dtype = pipe, device, dtype

    def params(self) -> dict[str, Any]:
        """Everything that decides an output besides the item itself (for provenance)."""
        vae_area, cond_area = self._areas
        return {
            "backend": self.name,
            "model": self.model,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "guidance": "true_cfg_scale",
            "scheduler": self.scheduler,
            "max_side": self.max_side,
            "max_garments": self.max_garments,
            "default_negative_prompt": DEFAULT_NEGATIVE_PROMPT,
            "vae_image_area": vae_area if vae_area is not None else "native",
            "condition_image_area": cond_area if cond_area is not None else "native",
            "processor": "image-only Qwen2VLProcessor (PIL image processor + tokenizer)",
            "cpu_offload": self.cpu_offload,
            "max_batch": self.max_batch,
            "adapter": self.adapter,
            "items_per_call": 1,
            "generator": "torch.Generator(cpu).manual_seed(item.seed), one call per item",
            **self.runtime_params(),
        }

    # ------------------------------------------------------------------ inference

    def run_batch(self, items: list[EditItem]) -> list[EditOutput]:
        """Edit ``items`` one pipeline call each; one output per item, in order."""
        self.load()

        def too_many_garments(item: EditItem) -> str | None:
            if len(item.garments) <= self.max_garments:
                return None
            return (f"item {item.key}: {len(item.garments)} garment images, at most "
                    f"{self.max_garments}; split the edit or raise max_garments")

        outputs, runnable = screen_items(items, "qwen-image-edit-plus", too_many_garments)

        def call(indices: list[int]) -> list[np.ndarray]:
            return [self._call_pipeline(items[i]) for i in indices]

        run_groups(items, [[i] for i in runnable], call, outputs, "qwen-image-edit-plus")
        return finish_outputs(outputs)

    def _call_pipeline(self, item: EditItem) -> np.ndarray:
        """One pipeline call: ``[person, *garments]`` -> float HWC array in [0, 1]."""
        width, height = self.output_size(item.image)
        images = [item.image.convert("RGB")] + [g.convert("RGB") for g in item.garments]
        guidance = 1.0 if getattr(self.pipe.transformer.config, "guidance_embeds", False) else None
        vae_area, cond_area = self._areas
        with _reference_areas(self._module, vae_area, cond_area):
            result = self.pipe(
                image=images,
                prompt=item.prompt,
                negative_prompt=item.negative_prompt or DEFAULT_NEGATIVE_PROMPT,
                true_cfg_scale=self.guidance_scale,
                guidance_scale=guidance,
                height=height,
                width=width,
                num_inference_steps=self.steps,
                generator=seeded_generator(item.seed),
                output_type="np",
            )
        return np.asarray(result.images[0], dtype=np.float32)
