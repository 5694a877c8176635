"""Face identity of an edit: faces found in the input and in the edit, and the distance between
the dlib ResNet descriptors of the largest face of each (dlib's own "same person" threshold is
0.6). ``identity_distance`` is missing when either photo has no face, so no identity threshold
applies to it; ``no_face`` (input had one, the edit has none) is decided from the counts."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.domain.scoring import ScoreItem, ScoreOutput
from common.media.faces import FaceModels
from worker_score.backends.base import per_item


class IdentityScorer:
    name = "identity"
    metrics = ("faces_input", "faces_edited", "identity_distance")

    def __init__(self, upsample: int = 1, max_side: int = 1024, **_: Any) -> None:
        self.faces = FaceModels(upsample=upsample, max_side=max_side)

    def load(self) -> None:
        self.faces.load()

    def unload(self) -> None:
        self.faces.unload()

    def params(self) -> dict[str, Any]:
        return {"detector": "dlib-hog", "landmarks": "5-point", "descriptor": "dlib_face_recognition_resnet_model_v1",
                "upsample": self.faces.upsample, "max_side": self.faces.max_side}

    def run_batch(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        return per_item(items, self._one)

    def _one(self, item: ScoreItem) -> dict[str, float]:
        before = self.faces.faces(item.input_image)
        after = self.faces.faces(item.edited_image)
        metrics = {"faces_input": float(len(before)), "faces_edited": float(len(after))}
        if before and after and before[0].descriptor is not None and after[0].descriptor is not None:
            metrics["identity_distance"] = float(np.linalg.norm(before[0].descriptor - after[0].descriptor))
        return metrics
