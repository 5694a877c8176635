"""The VL stage end to end on a tiny Qwen2.5-VL: ingest → pair (both recipes) → run vl."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from sqlalchemy import select

from common.devkit import samples
from common.domain.schemas import SCHEMA_VERSION, analysis_model
from common.store.rows import Analysis, Asset, ItemSet, Job


def _setup(tmp: Path, *, persons: int, garments: int, characters: int, tryon: int) -> None:
    from common.core.settings import get_settings
    from common.dataset.ingest import ingest
    from common.domain.pairing import pair
    from common.store.db import get_database
    from common.store.storage import get_storage

    folders = samples.write_samples(tmp / "photos", persons=persons, garments=garments,
                                    characters=characters, seed=11)
    db, settings = get_database(), get_settings()
    for role, folder in folders.items():
        assert not ingest(folder, role, db=db, storage=get_storage(), settings=settings).rejected
    with db.session() as s:
        if tryon:
            pair(s, settings, "tryon", limit=tryon, seed=3)
        if characters:
            pair(s, settings, "enrich", seed=3)


def _run_vl(batch_size: int | None = None) -> dict[str, int]:
    from common.core.settings import get_settings
    from common.runtime.runner import StageContext, run_stage
    from common.store.db import get_database
    from common.store.storage import get_storage

    ctx = StageContext(settings=get_settings(), db=get_database(), storage=get_storage())
    return run_stage("vl", ctx, batch_size=batch_size).by_status


def _analyses() -> dict[str, Analysis]:
    from common.store.db import get_database

    with get_database().session() as s:
        rows = s.execute(select(ItemSet.key, Analysis).join(Analysis, Analysis.item_set_id == ItemSet.id)).all()
        return {key: a for key, a in rows}


@pytest.fixture
def tiny(tiny_vl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_PAIRING__ENRICH_VARIATIONS", "2")
    use_tiny_models(monkeypatch, {"vl": tiny_vl})


def test_both_recipes_validate_and_queue_edits_and_rerun_does_nothing(tiny: None, tmp_path: Path) -> None:
    from common.store.db import get_database
    from common.store.jobs import counts

    _setup(tmp_path, persons=2, garments=3, characters=2, tryon=2)
    by_status = _run_vl(batch_size=3)
    assert by_status == {"succeeded": 6}, by_status
    analyses = _analyses()
    assert len(analyses) == 6
    recipes = {a.recipe for a in analyses.values()}
    assert recipes == {"tryon", "enrich"}
    for key, a in analyses.items():
        model = analysis_model(a.recipe)
        assert model.model_validate_json(a.raw_text).model_dump(mode="json") == a.data  # raw kept, parses
        assert a.edit_prompt == a.data["edit_prompt"] and 0 <= a.confidence <= 1
        assert a.feasibility in ("high", "medium", "low")
        assert a.schema_version == SCHEMA_VERSION and a.prompt_version == "v1"
        assert a.model_id.endswith("vl") and a.params["max_new_tokens"] == 2048
        assert a.timings["batch_size"] in (1, 2, 3) and a.timings["completion_tokens"] > 0, key
    assert counts(get_database())["edit"]["queued"] == 6
    # a rerun does nothing twice
    assert _run_vl() == {}
    assert len(_analyses()) == 6 and counts(get_database())["edit"]["queued"] == 6


def test_batch_gives_the_same_analyses_as_one_by_one(tiny: None, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.store.db import reset_databases

    runs = []
    for name, size in (("batched", 4), ("single", 1)):
        monkeypatch.setenv("SYNTHPIPE_DATA_DIR", str(tmp_path / name))
        reset_settings()
        reset_databases()
        _setup(tmp_path / name, persons=2, garments=3, characters=1, tryon=2)
        assert _run_vl(batch_size=size) == {"succeeded": 4}
        runs.append({k: a.raw_text for k, a in _analyses().items()})
    assert runs[0] == runs[1]
    assert len(set(runs[0].values())) == 4, "different sets should not give identical analyses"


def test_a_corrupt_image_fails_its_set_alone(tiny: None, tmp_path: Path) -> None:
    from common.store.db import get_database

    _setup(tmp_path, persons=2, garments=2, characters=0, tryon=3)
    db = get_database()
    with db.session() as s:
        victim = s.scalars(select(Asset).where(Asset.role == "person").order_by(Asset.id)).first()
        assert victim is not None
        path = Path(victim.uri.removeprefix("file://"))
        victim_id = victim.id
        affected = {m.item_set_id for m in s.scalars(select(ItemSet)).all() for m in m.members
                    if m.asset_id == victim_id}
    path.write_bytes(path.read_bytes()[:200])  # the stored object is damaged on disk
    by_status = _run_vl(batch_size=4)
    assert by_status["failed"] == len(affected) >= 1
    assert by_status.get("succeeded", 0) == 3 - len(affected)
    with db.session() as s:
        for job in s.scalars(select(Job).where(Job.stage == "vl", Job.status == "failed")):
            assert job.item_set_id in affected
            assert job.error_type == "input"
            assert f"person photo asset {victim_id}" in (job.error_message or "")
            assert "truncated or corrupt" in (job.error_message or "")


def test_gate_skips_low_confidence_and_short_budget_is_a_model_output_error(
        tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.store.db import get_database
    from common.store.jobs import counts

    _setup(tmp_path, persons=1, garments=2, characters=1, tryon=1)  # 1 tryon + 2 enrich
    monkeypatch.setenv("SYNTHPIPE_VL__MIN_CONFIDENCE", "1.0")
    monkeypatch.setenv("SYNTHPIPE_VL__MIN_FEASIBILITY", "high")
    reset_settings()
    with get_database().session() as s:  # one job gets a budget too small to close the JSON
        first = s.scalars(select(Job).where(Job.stage == "vl").order_by(Job.id)).first()
        assert first is not None
        first_id = first.id
    from common.core.settings import get_settings
    from common.runtime.runner import StageContext, run_claimed
    from common.store import jobs as jobstore
    from common.store.storage import get_storage

    monkeypatch.setenv("SYNTHPIPE_VL__MAX_NEW_TOKENS", "24")
    reset_settings()
    ctx = StageContext(settings=get_settings(), db=get_database(), storage=get_storage())
    claimed = jobstore.claim(ctx.db, "vl", 1, ids=[first_id])
    assert run_claimed("vl", claimed, ctx).by_status == {"failed": 1}
    monkeypatch.setenv("SYNTHPIPE_VL__MAX_NEW_TOKENS", "2048")
    reset_settings()
    by_status = _run_vl()
    assert by_status == {"skipped": 2}
    with get_database().session() as s:
        failed = s.get(Job, first_id)
        assert failed is not None and failed.error_type == "model_output" and failed.reason == "vl.truncated"
        assert failed.result and len(failed.result["raw"]) > 0  # the raw output is kept
        for job in s.scalars(select(Job).where(Job.stage == "vl", Job.status == "skipped")):
            assert job.reason in ("vl.low_feasibility", "vl.low_confidence")
            assert job.result and job.result["reason"] == job.reason and job.result["message"]
    assert counts(get_database())["edit"]["queued"] == 0
    assert len(_analyses()) == 2  # skipped analyses are kept for inspection
    # the budget is fixed now: `jobs retry` puts the failed job back with fresh attempts, recorded
    from common.cli import main
    from common.store.rows import JobEvent

    assert main(["jobs", "retry", "--stage", "vl", "--status", "failed", "--reason", "vl.truncated"]) == 0
    assert _run_vl() == {"skipped": 1}
    with get_database().session() as s:
        again = s.get(Job, first_id)
        assert again is not None and again.status == "skipped" and again.attempts == 1
        (event,) = s.scalars(select(JobEvent).where(JobEvent.job_id == first_id)).all()
        assert (event.action, event.from_status, event.to_status) == ("retry", "failed", "queued")


def test_a_misconfigured_runner_gives_the_jobs_back_uncharged(tiny: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA device on a machine without one is the runner's fault, not the jobs': the run stops
    with the reason, every job is queued again with the reason recorded and no attempt spent, and
    the same run with the setting fixed finishes them."""
    import torch

    from common.core.errors import ConfigError
    from common.core.settings import reset_settings
    from common.store.db import get_database

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where device=cuda is a settings error")
    _setup(tmp_path, persons=2, garments=2, characters=0, tryon=3)
    monkeypatch.setenv("SYNTHPIPE_VL__DEVICE", "cuda")
    reset_settings()
    with pytest.raises(ConfigError, match="no CUDA device"):
        _run_vl(batch_size=2)
    with get_database().session() as s:
        jobs = s.scalars(select(Job).where(Job.stage == "vl")).all()
        assert len(jobs) == 3 and {j.status for j in jobs} == {"queued"}
        claimed = [j for j in jobs if j.attempts == 1]
        assert len(claimed) == 2 and {j.max_attempts for j in claimed} == {4}
        assert all(j.error_type == "config" and "CUDA" in (j.error_message or "") for j in claimed)
    monkeypatch.delenv("SYNTHPIPE_VL__DEVICE")
    reset_settings()
    assert _run_vl(batch_size=2) == {"succeeded": 3}
