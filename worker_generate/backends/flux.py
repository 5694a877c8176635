"""FLUX.1 text-to-image (``FluxPipeline``) with an optional character LoRA.

FLUX.1-dev by default (distilled guidance, 28 steps); FLUX.1-schnell works with the same code
(4 steps; its transformer has no guidance embedding, so ``guidance_scale`` is ignored). Items of
one size run together, up to ``max_batch`` per call, each with a CPU generator seeded with its
seed, so a seed gives the same image on any device up to arithmetic. The LoRA (a folder in
diffusers' ``save_lora_weights`` layout: a synthpipe character adapter) is part of the backend:
another adapter is another backend instance.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.core.errors import ConfigError, ErrorKind, code_of, kind_of
from common.runtime.devices import dtype_name, load_pipeline

log = logging.getLogger(__name__)

SIDE_MULTIPLE = 16
ADAPTER_NAME = "character"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class GenerateItem:
    key: str
    prompt: str
    seed: int
    width: int
    height: int


@dataclass
class GenerateOutput:
    """An image, or why there is none (``error_kind`` + ``error_code``)."""

    image: Image.Image | None
    error: str | None = None
    error_kind: ErrorKind | None = None
    error_code: str | None = None
    seconds: float = 0.0


class FluxBackend:
    """Text-to-image with a FLUX.1 checkpoint (hub id or ``save_pretrained`` folder)."""

    name = "flux"

    def __init__(self, model: str = "black-forest-labs/FLUX.1-dev", steps: int = 28, guidance_scale: float = 3.5,
                 device: str = "auto", dtype: str = "auto", max_batch: int = 4, max_sequence_length: int = 512,
                 adapter: str | Path | None = None, lora_scale: float = 1.0, cpu_offload: bool = False) -> None:
        if steps < 1:
            raise ConfigError(f"generate.steps must be >= 1 (got {steps})")
        if adapter is not None and not (Path(adapter) / LORA_WEIGHTS).is_file():
            raise ConfigError(f"adapter folder {adapter} has no {LORA_WEIGHTS}")
        self.model = str(model)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.device = device
        self.dtype = dtype
        self.max_batch = max(1, int(max_batch))
        self.max_sequence_length = int(max_sequence_length)
        self.adapter = str(adapter) if adapter is not None else None
        self.lora_scale = float(lora_scale)
        self.cpu_offload = bool(cpu_offload)
        self.pipe: Any = None
        self._device: str | None = None
        self._dtype: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self.pipe is not None:
                return
            from diffusers import FluxPipeline

            self.pipe, self._device, self._dtype = load_pipeline(
                FluxPipeline, self.model, what="FLUX.1", setting="generate.model (SYNTHPIPE_GENERATE__MODEL)",
                device=self.device, dtype=self.dtype, lora=self.adapter, adapter_name=ADAPTER_NAME,
                lora_scale=self.lora_scale, cpu_offload=self.cpu_offload)

    def unload(self) -> None:
        with self._lock:
            if self.pipe is None:
                return
            self.pipe = None
            gc.collect()
            if self._device and self._device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

    def params(self) -> dict[str, Any]:
        """Everything that decides an image besides its prompt and seed (for lineage)."""
        import diffusers
        import torch

        embeds = bool(getattr(self.pipe.transformer.config, "guidance_embeds", False)) if self.pipe else None
        return {
            "backend": self.name, "model": self.model, "steps": self.steps,
            "guidance_scale": self.guidance_scale if embeds is not False else None,
            "scheduler": "flow_match_euler", "max_batch": self.max_batch,
            "max_sequence_length": self.max_sequence_length, "adapter_path": self.adapter,
            "lora_scale": self.lora_scale if self.adapter else None, "cpu_offload": self.cpu_offload,
            "generator": "torch.Generator(cpu).manual_seed(item.seed), one per item",
            "device": self._device or self.device, "dtype": dtype_name(self._dtype or self.dtype),
            "diffusers_version": diffusers.__version__, "torch_version": torch.__version__,
        }

    def run_batch(self, items: list[GenerateItem]) -> list[GenerateOutput]:
        """One output per item, in order; a failing call is retried item by item."""
        self.load()
        outputs: list[GenerateOutput | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(items):
            problem = self._check(item)
            if problem:
                outputs[i] = GenerateOutput(None, problem, ErrorKind.INPUT, "generate.invalid_item")
            else:
                groups.setdefault((item.width, item.height), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                self._run_group(items, indices[start:start + self.max_batch], outputs)
        return [o or GenerateOutput(None, "internal error: no result", ErrorKind.TRANSIENT, "generate.no_result")
                for o in outputs]

    @staticmethod
    def _check(item: GenerateItem) -> str | None:
        if not item.prompt.strip():
            return f"item {item.key}: prompt is empty"
        if item.width % SIDE_MULTIPLE or item.height % SIDE_MULTIPLE or min(item.width, item.height) < SIDE_MULTIPLE:
            return f"item {item.key}: width and height must be multiples of {SIDE_MULTIPLE}"
        if not 0 <= item.seed < 2**63:
            return f"item {item.key}: seed must be in [0, 2**63)"
        return None

    def _run_group(self, items: list[GenerateItem], group: list[int], outputs: list[GenerateOutput | None]) -> None:
        import torch

        started = time.perf_counter()
        batch = [items[i] for i in group]
        try:
            result = self.pipe(
                prompt=[it.prompt for it in batch], width=batch[0].width, height=batch[0].height,
                num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                max_sequence_length=self.max_sequence_length, output_type="np",
                generator=[torch.Generator(device="cpu").manual_seed(int(it.seed)) for it in batch],
            )
            arrays = [np.asarray(a, dtype=np.float32) for a in result.images]
        except Exception as exc:
            if len(group) > 1:
                log.warning("flux: batch of %d failed (%s); retrying one by one", len(group), exc)
                for i in group:
                    self._run_group(items, [i], outputs)
                return
            log.exception("flux: item %s failed", batch[0].key)
            outputs[group[0]] = GenerateOutput(None, f"{type(exc).__name__}: {exc}", kind_of(exc), code_of(exc),
                                               time.perf_counter() - started)
            return
        share = (time.perf_counter() - started) / len(group)
        for i, array in zip(group, arrays, strict=True):
            if not np.all(np.isfinite(array)):
                outputs[i] = GenerateOutput(None, "NaN in output", ErrorKind.MODEL_OUTPUT, "generate.nan_output", share)
            elif float(np.max(array)) < 0.5 / 255.0:
                outputs[i] = GenerateOutput(None, "all-black output", ErrorKind.MODEL_OUTPUT,
                                            "generate.black_output", share)
            else:
                data = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
                outputs[i] = GenerateOutput(Image.fromarray(data).convert("RGB"), seconds=share)
