"""Try-on: how close the edited person's clothing is to each garment photo.

The clothing region is the torso below the largest face dlib finds in the edit (from the chin
down, about 1.5 face widths either side, 3.5 face heights deep); without a face, the centre of
the photo. Its DINOv2 embedding is compared with each garment photo's: ``garment_max`` (the
garment worn best) and ``garment_mean``; ``garment_torso_found`` is 1 when a face placed the
crop. Items without garment photos (enrich) get no metrics, so no garment threshold applies.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from common.domain.scoring import ScoreItem
from common.media.faces import Face, FaceModels
from common.media.images import to_rgb
from worker_score.backends.dino import DinoEmbedder


def torso_box(size: tuple[int, int], face: Face | None) -> tuple[int, int, int, int]:
    """The clothing region of a photo of ``size``: below ``face``, or the centre without one."""
    w, h = size
    if face is None:
        return round(w * 0.2), round(h * 0.25), round(w * 0.8), round(h * 0.9)
    fw, fh = face.right - face.left, face.bottom - face.top
    cx = (face.left + face.right) / 2
    box = (cx - 1.5 * fw, face.bottom + 0.1 * fh, cx + 1.5 * fw, face.bottom + 3.6 * fh)
    left, top = max(0, round(box[0])), max(0, min(h - 2, round(box[1])))
    right, bottom = min(w, round(box[2])), min(h, round(box[3]))
    if right - left < 8 or bottom - top < 8:  # face at the bottom edge: no torso in the photo
        return round(w * 0.2), round(h * 0.25), round(w * 0.8), round(h * 0.9)
    return left, top, right, bottom


class GarmentScorer(DinoEmbedder):
    name = "garment"
    metrics = ("garment_max", "garment_mean", "garment_torso_found")
    setting = "score.garment_model (SYNTHPIPE_SCORE__GARMENT_MODEL, default score.dino_model)"

    def __init__(self, model: str = "facebook/dinov2-base", device: str = "auto", dtype: str = "auto",
                 max_batch: int = 8, upsample: int = 1, max_side: int = 1024) -> None:
        super().__init__(model, device, dtype, max_batch)
        self.faces = FaceModels(upsample=upsample, max_side=max_side, descriptors=False)

    def _load(self) -> None:
        super()._load()
        self.faces.load()

    def params(self) -> dict[str, Any]:
        return {**super().params(), "crop": "torso below the largest face (dlib HOG)"}

    def crop(self, im: Image.Image) -> tuple[Image.Image, bool]:
        im = to_rgb(im)
        found = self.faces.faces(im, describe_largest=False)
        return im.crop(torso_box(im.size, found[0] if found else None)), bool(found)

    def _score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        import torch

        results: list[dict[str, float]] = [{} for _ in items]
        todo = [k for k, i in enumerate(items) if i.garments]
        if not todo:
            return results
        crops = [self.crop(items[k].edited_image) for k in todo]
        garments = [g for k in todo for g in items[k].garments]
        emb = self.embed([c for c, _ in crops] + garments)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        torsos, garment_emb = emb[:len(todo)], emb[len(todo):]
        offset = 0
        for j, k in enumerate(todo):
            n = len(items[k].garments)
            sims = garment_emb[offset:offset + n] @ torsos[j]
            offset += n
            results[k] = {"garment_max": float(sims.max()), "garment_mean": float(sims.mean()),
                          "garment_torso_found": 1.0 if crops[j][1] else 0.0}
        return results
