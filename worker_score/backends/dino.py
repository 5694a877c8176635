"""DINOv2 similarity of an edit (UltraEdit's filter): cosine of the CLS embeddings of the input
photo and the edited photo. Low: the edit lost the picture's content."""

from __future__ import annotations

from typing import Any

from common.core.errors import model_load_error
from common.domain.scoring import ScoreItem
from worker_score.backends.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessor,
    TorchScorer,
    cosine,
    preprocess_config,
)


class DinoEmbedder(TorchScorer):
    """A DINOv2 model that embeds images (its CLS token after the last layer norm)."""

    setting = "score.dino_model (SYNTHPIPE_SCORE__DINO_MODEL)"

    def _load(self) -> None:
        from transformers import Dinov2Model

        try:
            self.model = Dinov2Model.from_pretrained(self.model_id, dtype=self.dtype).to(self.device).eval()  # type: ignore[arg-type]
        except Exception as exc:
            raise model_load_error(self.model_id, exc, self.setting) from exc
        size = int(self.model.config.image_size)
        self.pre = ImagePreprocessor(preprocess_config(self.model_id), size=size, crop=size, mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD)

    def embed(self, images: list[Any]) -> Any:
        out = self.model(pixel_values=self.pre(images, self.device, self.dtype))
        return out.pooler_output


class DinoScorer(DinoEmbedder):
    name = "dino"
    metrics = ("dino_similarity",)

    def __init__(self, model: str = "facebook/dinov2-base", device: str = "auto", dtype: str = "auto",
                 max_batch: int = 8) -> None:
        super().__init__(model, device, dtype, max_batch)

    def _score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        n = len(items)
        emb = self.embed([i.input_image for i in items] + [i.edited_image for i in items])
        sim = cosine(emb[:n], emb[n:])
        return [{"dino_similarity": float(s)} for s in sim]
