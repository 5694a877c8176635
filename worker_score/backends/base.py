"""What the scorer backends share: per-item error handling, image preparation, embeddings.

Nothing here imports torch at module import time.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from common.core.errors import ErrorKind, SynthpipeError, code_of, kind_of
from common.domain.scoring import ScoreItem, ScoreOutput
from common.media.images import to_rgb

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: CLIP's and ImageNet's normalisation, used when a checkpoint has no preprocessor config
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def failure(exc: BaseException, seconds: float = 0.0) -> ScoreOutput:
    """The output of an item that ``exc`` stopped. Our own errors keep their kind and code; an
    unexpected exception is transient (``score.crashed``): the job is tried again."""
    if isinstance(exc, SynthpipeError):
        return ScoreOutput.failed(str(exc) or code_of(exc), kind=kind_of(exc), code=code_of(exc), seconds=seconds)
    return ScoreOutput.failed(f"{type(exc).__name__}: {exc}", kind=ErrorKind.TRANSIENT, code="score.crashed",
                              seconds=seconds)


def per_item(items: Sequence[ScoreItem], fn: Callable[[ScoreItem], dict[str, float]]) -> list[ScoreOutput]:
    """Run ``fn`` on each item; an item whose ``fn`` raises gets its error, the rest go on."""
    outputs = []
    for item in items:
        started = time.perf_counter()
        try:
            metrics = fn(item)
            outputs.append(ScoreOutput(metrics=metrics, seconds=time.perf_counter() - started))
        except Exception as exc:
            log.warning("scoring %s failed: %s", item.key, exc)
            outputs.append(failure(exc, time.perf_counter() - started))
    return outputs


def batched(items: Sequence[ScoreItem], fn: Callable[[list[ScoreItem]], list[dict[str, float]]],
            max_batch: int) -> list[ScoreOutput]:
    """Run ``fn`` over chunks of ``max_batch`` items (one forward pass each). A chunk that fails
    as a whole is run again one item at a time, so only the items that fail alone get an error."""
    outputs: list[ScoreOutput] = []
    for start in range(0, len(items), max_batch):
        chunk = list(items[start:start + max_batch])
        started = time.perf_counter()
        try:
            results = fn(chunk)
            each = (time.perf_counter() - started) / len(chunk)
            outputs += [ScoreOutput(metrics=m, seconds=each) for m in results]
        except Exception as exc:
            if len(chunk) == 1:
                outputs.append(failure(exc, time.perf_counter() - started))
                continue
            log.warning("a batch of %d failed (%s); scoring its items one at a time", len(chunk), exc)
            outputs += batched(chunk, fn, 1)
    return outputs


def preprocess_config(model: str) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` (local directory or hub cache), or {}."""
    try:
        from transformers.image_processing_utils import BaseImageProcessor

        config, _ = BaseImageProcessor.get_image_processor_dict(model)
        return dict(config)
    except Exception as exc:  # no preprocessor config: the caller's defaults apply
        log.info("%s has no preprocessor config (%s); using defaults", model, str(exc).splitlines()[0][:200])
        return {}


def _side(value: Any, default: int) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
    return default


class ImagePreprocessor:
    """Resize the shortest side, centre-crop, normalise: what CLIP's and DINOv2's image
    processors do, in numpy + torch so no torchvision is needed."""

    def __init__(self, config: dict[str, Any], *, size: int, crop: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.size = _side(config.get("size"), size)
        self.crop = _side(config.get("crop_size"), crop) if config.get("do_center_crop", True) else self.size
        self.mean = np.asarray(config.get("image_mean", mean), dtype=np.float32)
        self.std = np.asarray(config.get("image_std", std), dtype=np.float32)

    def one(self, im: Image.Image) -> np.ndarray:
        im = to_rgb(im)
        w, h = im.size
        scale = self.size / min(w, h)
        im = im.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return ((arr - self.mean) / self.std).transpose(2, 0, 1)

    def __call__(self, images: Sequence[Image.Image], device: str, dtype: torch.dtype) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.stack([self.one(im) for im in images])).to(device=device, dtype=dtype)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, D) tensors, in float32."""
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


class TorchScorer:
    """A scorer holding one transformers model on a device. Subclasses set ``name`` and
    ``metrics`` and implement ``_load`` and ``_score``."""

    name = ""
    metrics: tuple[str, ...] = ()

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", max_batch: int = 8) -> None:
        self.model_id = str(model)
        self.device_setting = device
        self.dtype_setting = dtype
        self.max_batch = int(max_batch)
        self.device = "cpu"
        self.model: Any = None

    def load(self) -> None:
        import torch

        from common.runtime.devices import resolve_device

        self.device = resolve_device(self.device_setting)
        self.dtype = torch.float32
        if self.device.startswith("cuda") and self.dtype_setting in ("auto", "bfloat16"):
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._load()

    def _load(self) -> None:
        raise NotImplementedError

    def unload(self) -> None:
        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def params(self) -> dict[str, Any]:
        return {"model": self.model_id, "device": self.device, "max_batch": self.max_batch}

    def run_batch(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        import torch

        with torch.inference_mode():
            return batched(items, self._score, self.max_batch)

    def _score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        raise NotImplementedError
