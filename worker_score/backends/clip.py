"""CLIP scores of an edit (InstructPix2Pix's filters): image-image cosine of input and edit,
directional similarity, and edited image vs instruction.

Directional similarity is ``cos(E(edit) - E(input), T(instruction) - T(source caption))``.
The input photo has no caption of its own, so the source text is ``score.clip_source_caption``
(default ``"a photo"``): the text delta then points from a neutral description towards what
was asked for. Items without an instruction get ``clip_image`` only.
"""

from __future__ import annotations

from typing import Any

from common.core.errors import model_load_error
from common.domain.scoring import ScoreItem
from worker_score.backends.base import (
    CLIP_MEAN,
    CLIP_STD,
    ImagePreprocessor,
    TorchScorer,
    cosine,
    preprocess_config,
)


class ClipScorer(TorchScorer):
    name = "clip"
    metrics = ("clip_image", "clip_direction", "clip_text")

    def __init__(self, model: str = "openai/clip-vit-large-patch14", source_caption: str = "a photo",
                 device: str = "auto", dtype: str = "auto", max_batch: int = 8) -> None:
        super().__init__(model, device, dtype, max_batch)
        self.source_caption = source_caption

    def _load(self) -> None:
        from transformers import AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(self.model_id, dtype=self.dtype).to(self.device).eval()  # type: ignore[arg-type]
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
        except Exception as exc:
            raise model_load_error(self.model_id, exc, "score.clip_model (SYNTHPIPE_SCORE__CLIP_MODEL)") from exc
        size = int(self.model.config.vision_config.image_size)
        self.pre = ImagePreprocessor(preprocess_config(self.model_id), size=size, crop=size, mean=CLIP_MEAN,
                                     std=CLIP_STD)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "source_caption": self.source_caption}

    def _image_embeds(self, images: list[Any]) -> Any:
        out = self.model.get_image_features(pixel_values=self.pre(images, self.device, self.dtype))
        return getattr(out, "pooler_output", out)  # transformers 5 returns an output object

    def _text_embeds(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return getattr(out, "pooler_output", out)

    def _score(self, items: list[ScoreItem]) -> list[dict[str, float]]:
        n = len(items)
        img = self._image_embeds([i.input_image for i in items] + [i.edited_image for i in items])
        before, after = img[:n], img[n:]
        image_image = cosine(before, after)
        with_text = [k for k, i in enumerate(items) if i.prompt]
        results: list[dict[str, float]] = [{"clip_image": float(image_image[k])} for k in range(n)]
        if with_text:
            txt = self._text_embeds([self.source_caption] + [str(items[k].prompt) for k in with_text])
            source, target = txt[:1], txt[1:]
            delta = after[with_text] - before[with_text]
            direction = cosine(delta, target - source)
            # an unchanged image has no direction: what is left of its delta is float noise of
            # the batched forward pass, whose cosine with anything is arbitrary
            still = delta.float().norm(dim=-1) <= 1e-4 * before[with_text].float().norm(dim=-1)
            direction = direction.masked_fill(still, 0.0)
            image_text = cosine(after[with_text], target)
            for j, k in enumerate(with_text):
                results[k]["clip_direction"] = float(direction[j])
                results[k]["clip_text"] = float(image_text[j])
        return results
