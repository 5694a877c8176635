"""Helpers for runs at real model sizes with random weights: build on the device, time steps, peak memory.

Random weights cost the same arithmetic as trained ones, so timings hold. Building a model of
billions of parameters on the CPU (float32 init, then a copy) takes minutes; building it with
the device and bfloat16 as defaults takes seconds, and nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def on_device(device: str, dtype: Any = None) -> Iterator[None]:
    """Modules made inside are made on ``device`` with ``dtype`` (default bfloat16) parameters."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    """Peak allocated GPU memory since the last :func:`reset_peak` (None off CUDA)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def free_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.mem_get_info()[0] / 2**30, 2)


def param_billions(module: Any) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e9, 3)


class StepTimer:
    """Times a LoRA trainer's optimizer steps: wraps ``trainer.step_loss`` (called once per step
    by the loop) and keeps the time between consecutive calls (one whole step: forward, backward,
    optimizer). The first step (allocator and kernel warm-up) is dropped when there are others."""

    def __init__(self, trainer: Any, device: str) -> None:
        self.marks: list[float] = []
        plain = trainer.step_loss

        def timed(step: int) -> Any:
            sync(device)
            self.marks.append(time.perf_counter())
            return plain(step)

        trainer.step_loss = timed
        self.trainer = trainer
        self.device = device

    def seconds_per_step(self, end: float) -> float | None:
        """Median step time; ``end`` is when the last step finished (taken after the loop)."""
        marks = [*self.marks, end]
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        if len(gaps) > 1:
            gaps = gaps[1:]
        return round(statistics.median(gaps), 4) if gaps else None


def time_training(trainer: Any, examples: list[Any], checkpoint_dir: Any, device: str) -> dict[str, Any]:
    """Run ``trainer.train`` with step timing: seconds per optimizer step (median, after the
    first), the whole train call and peak memory. The fixed-batch loss before and after is
    averaged over one draw only, to keep the run short."""
    trainer.eval_draws = 1
    timer = StepTimer(trainer, device)
    last = {"t": 0.0}
    plain_eval = trainer.fixed_batch_loss

    def eval_loss() -> float:  # called before the first step and after the last
        if timer.marks:
            sync(device)
            last["t"] = time.perf_counter()
        return float(plain_eval())

    trainer.fixed_batch_loss = eval_loss
    reset_peak(device)
    started = time.perf_counter()
    result = trainer.train(examples, checkpoint_dir)
    sync(device)
    return {"steps": result.steps, "s_per_step": timer.seconds_per_step(last["t"] or time.perf_counter()),
            "train_call_s": round(time.perf_counter() - started, 2), "peak_gib": peak_gib(device),
            "trainable_params_m": round(sum(p.numel() for p in trainer.params) / 1e6, 2),
            "loss_first": result.loss_curve[0][1] if result.loss_curve else None,
            "loss_last": result.loss_curve[-1][1] if result.loss_curve else None}


@contextlib.contextmanager
def random_vl_weights(device: str) -> Iterator[None]:
    """Inside, ``transformers.AutoModelForImageTextToText.from_pretrained(folder, ...)`` (what the
    VL backend and the VL LoRA trainer call) builds the folder's config with random weights on
    ``device`` in the asked dtype (default bfloat16) instead of reading weights: a 7B model in
    seconds, no 16 GB written and read back. Quantization and device maps are ignored."""
    import torch
    import transformers as transformers_module

    transformers: Any = transformers_module  # its attribute is swapped for a while
    real = transformers.AutoModelForImageTextToText

    class RandomInit:
        @staticmethod
        def from_pretrained(path: Any, *_: Any, dtype: Any = None, **__: Any) -> Any:
            config = transformers.AutoConfig.from_pretrained(path)
            cls = getattr(transformers, (config.architectures or ["Qwen2_5_VLForConditionalGeneration"])[0])
            torch.manual_seed(0)
            with on_device(device, dtype if isinstance(dtype, torch.dtype) else torch.bfloat16):
                model = cls(config)
            with contextlib.suppress(OSError):
                model.generation_config = transformers.GenerationConfig.from_pretrained(path)
            return model

    transformers.AutoModelForImageTextToText = RandomInit
    try:
        yield
    finally:
        transformers.AutoModelForImageTextToText = real
