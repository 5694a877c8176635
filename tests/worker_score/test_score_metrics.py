"""The score stage reports its model-call time: a local score run observes
``synthpipe_model_call_seconds`` for stage score (one observation per batch)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from common.domain.scorequeue import queue_score
from common.media.assets import Provenance, register_image_bytes
from common.store.rows import Edit, ItemSet, ItemSetAsset, Job
from common.store.storage import get_storage


def _png(seed: int, side: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _queue_edits(db, n: int) -> None:  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings

    settings = get_settings()
    storage = get_storage(settings.storage_url)
    with db.session() as s:
        person = register_image_bytes(s, _png(1), role="person", provenance=Provenance(), storage=storage,
                                      limits=settings.images)
        for k in range(n):
            item = ItemSet(key=f"m:{k}", recipe="tryon", keywords={}, seed=0)
            item.members = [ItemSetAsset(position=0, asset_id=person.asset_id, role="person")]
            s.add(item)
            s.flush()
            stored = storage.put(_png(10 + k), "png")
            edit = Edit(item_set_id=item.id, origin="imported", edit_prompt="darker", import_key=f"m:{k}",
                        backend="imported", model_id="", params={}, seed=0, output_uri=stored.uri,
                        output_sha256=stored.sha256, width=96, height=96, timings={})
            s.add(edit)
            s.flush()
            queue_score(s, edit.id, item_set_id=item.id)


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from common.observability.metrics import _worker_metrics

    metrics = _worker_metrics()
    assert metrics is not None, "prometheus_client is installed with the distributed extra"
    return {tuple(sorted(s.labels.items())): s.value for fam in metrics["registry"].collect()
            for s in fam.samples if s.name == name}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_local_score_run_observes_the_model_call_seconds(db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("prometheus_client")
    from common.core.settings import reset_settings
    from common.runtime.runner import StageContext, run_stage

    monkeypatch.setenv("SYNTHPIPE_SCORE__SCORERS", "change")  # no model to load: the call is still timed
    monkeypatch.setenv("SYNTHPIPE_SCORE__BATCH_SIZE", "2")
    reset_settings()
    _queue_edits(db, 3)
    key = (("stage", "score"),)
    count_before = _samples("synthpipe_model_call_seconds_count").get(key, 0.0)
    sum_before = _samples("synthpipe_model_call_seconds_sum").get(key, 0.0)
    from common.core.settings import get_settings

    settings = get_settings()
    ctx = StageContext(db=db, storage=get_storage(settings.storage_url), settings=settings)
    stats = run_stage("score", ctx)
    assert stats.by_status == {"succeeded": 3}, stats
    with db.session() as s:
        results = [j.result for j in s.scalars(select(Job).where(Job.stage == "score"))]
    assert all(r["batch_seconds"] > 0 and r["batch_size"] in (1, 2) for r in results), results
    calls = len({(r["batch_size"], r["batch_seconds"]) for r in results})  # one per batch: 2 + 1 jobs
    assert calls == 2
    assert _samples("synthpipe_model_call_seconds_count")[key] - count_before == 2
    observed = _samples("synthpipe_model_call_seconds_sum")[key] - sum_before
    assert observed == pytest.approx(sum({r["batch_seconds"] for r in results}), rel=1e-3)
