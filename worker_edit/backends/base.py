"""Types and helpers shared by the edit backends.

Nothing here imports torch at module import time: the dataclasses and the resolution policy
can be used by services that never load a model.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from common.core.errors import ConfigError, ErrorKind, SynthpipeError, code_of, kind_of, rebuild
from common.runtime.devices import dtype_name, resolve_device, resolve_dtype  # noqa: F401  (re-exported: the backends import them from here)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Error texts of outputs that decoded but are not images (their codes: edit.nan_output,
#: edit.black_output).
ERROR_NAN = "NaN in output"
ERROR_BLACK = "all-black output"
_OUTPUT_CODES = {ERROR_NAN: "edit.nan_output", ERROR_BLACK: "edit.black_output"}

#: Largest seed accepted (torch generators take 64-bit seeds; keep to the signed range).
MAX_SEED = 2**63 - 1


@dataclass
class EditItem:
    """One edit request: a person image, optional garment images, a prompt and a seed."""

    key: str
    image: Image.Image
    garments: list[Image.Image] = field(default_factory=list)
    prompt: str = ""
    negative_prompt: str | None = None
    seed: int = 0


@dataclass
class EditOutput:
    """The result for one item: an image, or ``error`` naming why there is none."""

    image: Image.Image | None
    error: str | None = None
    seconds: float = 0.0
    error_kind: ErrorKind | None = None
    error_code: str | None = None

    @classmethod
    def failed(cls, message: str, kind: ErrorKind, code: str, seconds: float = 0.0) -> EditOutput:
        return cls(None, message, seconds, kind, code)

    def exception(self) -> SynthpipeError | None:
        """The error this output carries as its type (None when there is an image)."""
        if self.error is None and self.image is not None:
            return None
        return rebuild(self.error_kind or ErrorKind.TRANSIENT, self.error or "no image returned",
                       code=self.error_code or "edit.no_image")


@runtime_checkable
class EditBackend(Protocol):
    """What a stage service needs from an edit backend."""

    name: str

    def load(self) -> None: ...

    def run_batch(self, items: list[EditItem]) -> list[EditOutput]: ...

    def unload(self) -> None: ...

    def params(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- resolution


def fit_resolution(width: int, height: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """Output ``(width, height)`` for an input of ``width`` x ``height``.

    Policy: the aspect ratio is kept (as closely as multiples allow); the longer side is
    scaled down to at most ``max_side`` (never up); both sides are rounded to the nearest
    multiple of ``multiple``, at least one multiple and never above ``max_side``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if multiple <= 0 or max_side < multiple:
        raise ConfigError(f"max_side must be at least {multiple} (got {max_side})")
    scale = min(1.0, max_side / max(width, height))
    cap = (max_side // multiple) * multiple

    def snap(side: float) -> int:
        nearest = math.floor(side / multiple + 0.5) * multiple  # half rounds up, not to even
        return int(min(cap, max(multiple, nearest)))

    return snap(width * scale), snap(height * scale)


# --------------------------------------------------------------------------- validation


def validate_item(item: EditItem, *, needs_garments: bool = False) -> str | None:
    """Return why ``item`` cannot be run, or ``None`` when it is fine."""
    if not isinstance(item.image, Image.Image):
        return f"item {item.key}: image must be a PIL image, got {type(item.image).__name__}"
    if item.image.width < 1 or item.image.height < 1:
        return f"item {item.key}: image is empty"
    if not isinstance(item.prompt, str) or not item.prompt.strip():
        return f"item {item.key}: prompt is empty; give an edit instruction"
    if item.negative_prompt is not None and not isinstance(item.negative_prompt, str):
        return f"item {item.key}: negative_prompt must be a string or None"
    if isinstance(item.seed, bool) or not isinstance(item.seed, int) or not 0 <= item.seed <= MAX_SEED:
        return f"item {item.key}: seed must be an int in [0, 2**63 - 1], got {item.seed!r}"
    if not isinstance(item.garments, list) or not all(isinstance(g, Image.Image) for g in item.garments):
        return f"item {item.key}: garments must be a list of PIL images"
    if needs_garments and not item.garments:
        return f"item {item.key}: this editor needs at least one garment image"
    return None


def check_output_array(array: np.ndarray) -> str | None:
    """Why a decoded image (floats in [0, 1], any layout) is not an image, or ``None``.

    Non-finite values give ``ERROR_NAN``; an image whose every value would round to 0 in
    8 bits gives ``ERROR_BLACK``.
    """
    if not np.all(np.isfinite(array)):
        return ERROR_NAN
    if array.size == 0 or float(np.max(array)) < 0.5 / 255.0:
        return ERROR_BLACK
    return None


def array_to_image(array: np.ndarray) -> Image.Image:
    """An HWC float array in [0, 1] (already checked) as an RGB PIL image."""
    data = np.clip(np.rint(np.asarray(array, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    if data.ndim == 3 and data.shape[0] in (1, 3) and data.shape[-1] not in (1, 3):
        data = np.transpose(data, (1, 2, 0))
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return Image.fromarray(data).convert("RGB")


# --------------------------------------------------------------------------- devices


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``.

    CPU generators make the initial noise the same on every device (diffusers draws on the
    CPU and moves the tensor), so a seed reproduces an image across CPU and GPU runs up to
    arithmetic differences.
    """
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


# --------------------------------------------------------------------------- batches


def group_indices(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices grouped by equal key, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def chunked(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive chunks of at most ``size``."""
    size = max(1, size)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def screen_items(
    items: Sequence[EditItem], label: str, extra_check: Callable[[EditItem], str | None] | None = None
) -> tuple[list[EditOutput | None], list[int]]:
    """Outputs with an error filled in for each invalid item, and the indices of the valid ones."""
    outputs: list[EditOutput | None] = [None] * len(items)
    runnable: list[int] = []
    for index, item in enumerate(items):
        problem = validate_item(item)
        if problem is None and extra_check is not None:
            problem = extra_check(item)
        if problem is None:
            runnable.append(index)
        else:
            logger.warning("%s: %s", label, problem)
            outputs[index] = EditOutput.failed(problem, ErrorKind.INPUT, "edit.invalid_item")
    return outputs, runnable


def run_groups(
    items: Sequence[EditItem],
    groups: list[list[int]],
    call: Callable[[list[int]], list[np.ndarray]],
    outputs: list[EditOutput | None],
    label: str,
) -> None:
    """Run ``call`` once per group of item indices and fill ``outputs`` in place.

    ``call`` returns one HWC float array in [0, 1] per index, in order. A group whose call
    raises is retried one item at a time, so one failing item never takes its group down.
    Each output gets its share of its call's wall time.
    """
    for group in groups:
        start = time.perf_counter()
        try:
            arrays = call(group)
            if len(arrays) != len(group):
                raise RuntimeError(f"pipeline returned {len(arrays)} images for {len(group)} items")
        except Exception as exc:
            if len(group) > 1:
                logger.warning("%s: batch of %d failed (%s: %s); retrying one by one",
                               label, len(group), type(exc).__name__, exc)
                run_groups(items, [[i] for i in group], call, outputs, label)
                continue
            logger.exception("%s: item %s failed", label, items[group[0]].key)
            seconds = time.perf_counter() - start
            outputs[group[0]] = EditOutput.failed(f"{type(exc).__name__}: {exc}", kind_of(exc), code_of(exc), seconds)
            continue
        share = (time.perf_counter() - start) / len(group)
        for index, array in zip(group, arrays, strict=True):
            error = check_output_array(array)
            if error is not None:
                logger.warning("%s: item %s: %s", label, items[index].key, error)
                outputs[index] = EditOutput.failed(error, ErrorKind.MODEL_OUTPUT, _OUTPUT_CODES[error], share)
            else:
                outputs[index] = EditOutput(array_to_image(array), None, share)


def finish_outputs(outputs: list[EditOutput | None]) -> list[EditOutput]:
    """Replace any slot left empty by a bug with an error output (never drop an item)."""
    return [o if o is not None else EditOutput.failed("internal error: no result", ErrorKind.TRANSIENT, "edit.no_result")
            for o in outputs]



class PipelineBackend:
    """What the diffusers backends share: the loaded pipeline, freeing it, the resolution policy
    and the runtime facts recorded with every edit. Subclasses set ``pipe``, ``_device`` and
    ``_dtype`` in ``load()`` under ``_lock``, and ``side_multiple``."""

    side_multiple = 8
    max_side: int
    device: str
    dtype: str

    def __init__(self) -> None:
        self.pipe: Any = None
        self._device: str | None = None
        self._dtype: Any = None
        self._lock = threading.Lock()

    def unload(self) -> None:
        """Drop the pipeline and free its memory."""
        with self._lock:
            if self.pipe is None:
                return
            self.pipe = None
            gc.collect()
            if self._device and self._device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

    def output_size(self, image: Image.Image) -> tuple[int, int]:
        """``(width, height)`` of the edit of ``image`` (the person image) under this backend."""
        return fit_resolution(image.width, image.height, self.max_side, self.side_multiple)

    def runtime_params(self) -> dict[str, Any]:
        """Device, dtype and library versions, for provenance."""
        import diffusers
        import torch

        return {
            "side_multiple": self.side_multiple,
            "device": self._device or self.device,
            "dtype": dtype_name(self._dtype) if self._dtype is not None else self.dtype,
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
        }
