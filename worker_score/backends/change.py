"""How much an edit changed: colour mean absolute difference, structural similarity (SSIM) and
the fraction of pixels whose colour moved noticeably.

SSIM compares structure, so a relit or recoloured photo keeps a high SSIM although it is a real
edit; the colour MAD tells it apart from an edit that changed nothing (``no_change`` needs a
high SSIM *and* a tiny MAD). No model: numpy and scikit-image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from common.core.errors import InputError
from common.domain.scoring import ScoreItem, ScoreOutput
from common.media.images import to_rgb
from worker_score.backends.base import per_item

#: a pixel "changed" when one of its channels moved by more than this (0-1)
CHANGED_PIXEL = 0.1


def _fit(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    im = to_rgb(im)
    if im.size != size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


class ChangeScorer:
    name = "change"
    metrics = ("mad", "ssim", "changed_fraction")

    def __init__(self, side: int = 256, **_: Any) -> None:
        self.side = int(side)

    def load(self) -> None:
        from skimage.metrics import structural_similarity

        self._ssim = structural_similarity

    def unload(self) -> None:
        pass

    def params(self) -> dict[str, Any]:
        return {"side": self.side, "changed_pixel": CHANGED_PIXEL}

    def run_batch(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        return per_item(items, self._one)

    def _one(self, item: ScoreItem) -> dict[str, float]:
        w, h = item.edited_image.size
        if min(w, h) < 7:
            raise InputError(f"{item.key}: edited image {w}x{h} is too small to compare", code="score.image_too_small")
        scale = min(1.0, self.side / max(w, h))
        size = (max(7, round(w * scale)), max(7, round(h * scale)))
        before, after = _fit(item.input_image, size), _fit(item.edited_image, size)
        diff = np.abs(before - after)
        grey = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        ssim = self._ssim(before @ grey, after @ grey, data_range=1.0)
        return {
            "mad": float(diff.mean()),
            "ssim": float(ssim),
            "changed_fraction": float((diff.max(axis=2) > CHANGED_PIXEL).mean()),
        }
