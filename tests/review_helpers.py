"""Edits with scores and AI decisions, made straight in the store, for the review tests."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image

from common.core.settings import ImageSettings
from common.media.assets import Provenance, register_image_bytes
from common.store.db import Database
from common.store.rows import Decision, Edit, ItemSet, ItemSetAsset, Score
from common.store.storage import Storage


def png(seed: int, size: int = 64) -> bytes:
    """A small noise image, different for every seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Spec:
    recipe: str = "tryon"
    site: str | None = "shop-a"
    category: str | None = "retailer"
    ai: str | None = "accepted"  # None: not decided yet
    reasons: tuple[str, ...] = ()
    margin: float | None = 0.1
    clip: float = 0.3
    garments: int = 1


def add_edit(db: Database, storage: Storage, spec: Spec, seed: int) -> int:
    """One edit (input + garments + edited image, a clip score, maybe an AI decision); its id."""
    with db.session() as s:
        ids = []
        for k in range(1 + (spec.garments if spec.recipe == "tryon" else 0)):
            role = "person" if k == 0 else "garment"
            reg = register_image_bytes(s, png(seed * 10 + k), role=role, storage=storage,
                                       provenance=Provenance(site=spec.site, category=spec.category),
                                       limits=ImageSettings())
            assert reg.asset_id is not None, reg
            ids.append((reg.asset_id, role))
        item = ItemSet(key=f"review-test-{seed}", recipe=spec.recipe)
        item.members = [ItemSetAsset(position=i, asset_id=a, role=r) for i, (a, r) in enumerate(ids)]
        s.add(item)
        s.flush()
        out = storage.put(png(seed * 10 + 9), "png")
        edit = Edit(item_set_id=item.id, origin="imported", edit_prompt=f"make edit {seed} look right",
                    import_key=f"k{seed}", backend="test", model_id="test", params={}, seed=seed,
                    output_uri=out.uri, output_sha256=out.sha256, width=64, height=64, timings={})
        s.add(edit)
        s.flush()
        s.add(Score(edit_id=edit.id, scorer="clip", metrics={"clip_score": spec.clip}, params={}))
        if spec.ai:
            s.add(Decision(edit_id=edit.id, decision=spec.ai, reasons=list(spec.reasons), margin=spec.margin,
                           failed={r: {"metric": "clip_score", "value": spec.clip, "threshold": 0.25}
                                   for r in spec.reasons}, thresholds={}))
        return edit.id
