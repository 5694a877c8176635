"""Best-of-N's early stop in local mode on tiny models: with ``edit.early_stop_margin`` a set's
candidate 0 is made first; a rejected candidate 0 queues the rest, and a candidate accepted with
that margin cancels its siblings still queued with the reason code ``edit.early_stop`` (each
cancel recorded as a job event); a candidate 0 accepted so makes the set's only candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import ingest_and_pair, stage_context
from sqlalchemy import select

from common.cli import main
from common.core.settings import reset_settings
from common.domain.editplan import EARLY_STOP
from common.runtime.runner import run_stage
from common.store.rows import Decision, Edit, Job, JobEvent, Selection


@pytest.fixture
def early_stop(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.devkit.tinymodels import build_one

    use_tiny_models(monkeypatch, {name: build_one(name, tiny_dir) for name in ("vl", "edit")})
    for key, value in {"SYNTHPIPE_EDIT__CANDIDATES": "3", "SYNTHPIPE_EDIT__EARLY_STOP_MARGIN": "0",
                       "SYNTHPIPE_SCORE__SCORERS": "change", "SYNTHPIPE_EDIT__BATCH_SIZE": "1",
                       # every edit changes its photo's colours: rejected (change_too_large) while this holds
                       "SYNTHPIPE_SCORE__TRYON__MAD_MAX": "0"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()


def _edit_jobs(ctx) -> list[Job]:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        return list(s.scalars(select(Job).where(Job.stage == "edit").order_by(Job.id)))


def test_a_candidate_accepted_with_margin_cancels_its_queued_siblings(
        early_stop: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ingest_and_pair(tmp_path, persons=2, garments=2, characters=0, tryon=1)
    ctx = stage_context()
    run_stage("vl", ctx)
    (first,) = _edit_jobs(ctx)  # one wave: candidate 0, carrying the others' plan
    assert first.payload["candidate"] == 0 and first.payload["early_stop_margin"] == 0
    assert [d["candidate"] for d in first.payload["deferred"]] == [1, 2]
    run_stage("edit", ctx)
    run_stage("score", ctx)  # candidate 0 rejected: the rest are queued
    jobs = _edit_jobs(ctx)
    assert [(j.payload["candidate"], j.status) for j in jobs] == [(0, "succeeded"), (1, "queued"), (2, "queued")]
    assert {j.parent_id for j in jobs} == {first.parent_id}  # the vl job planned them all
    assert len({j.payload["seed"] for j in jobs}) == 3 and {j.payload["backend"] for j in jobs} == {"instruct-pix2pix"}

    monkeypatch.delenv("SYNTHPIPE_SCORE__TRYON__MAD_MAX")  # from now on edits are accepted
    reset_settings()
    ctx = stage_context()
    run_stage("edit", ctx, max_jobs=1)  # candidate 1 made; candidate 2 still queued
    run_stage("score", ctx)
    jobs = _edit_jobs(ctx)
    assert [(j.payload["candidate"], j.status, j.reason) for j in jobs] == [
        (0, "succeeded", None), (1, "succeeded", None), (2, "cancelled", EARLY_STOP)]
    with ctx.db.session() as s:
        (event,) = s.scalars(select(JobEvent).where(JobEvent.job_id == jobs[2].id)).all()
        assert (event.action, event.from_status, event.to_status) == ("cancel", "queued", "cancelled")
        assert event.actor.startswith("early-stop: edit ")
        edits = s.scalars(select(Edit).order_by(Edit.candidate)).all()
        assert [e.candidate for e in edits] == [0, 1]
        decisions = {d.edit_id: d.decision for d in s.scalars(select(Decision))}
        assert [decisions[e.id] for e in edits] == ["rejected", "accepted"]
        (sel,) = s.scalars(select(Selection)).all()
        assert (sel.edit_id, sel.candidates, sel.expected) == (edits[1].id, 2, 3)
    assert run_stage("edit", ctx).claimed == 0  # the cancelled candidate is never made

    # a second set whose candidate 0 is accepted with the margin: its other candidates are never queued
    with ctx.db.session() as s:
        from common.domain.pairing import pair

        assert pair(s, ctx.settings, "tryon", limit=2, seed=1).created == 1
    capsys.readouterr()
    assert main(["run", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert ran["edit"] == {"claimed": 1, "succeeded": 1}
    best = ran["best_of_n"]
    assert best["sets"] == 1 and best["candidates_expected"] == 3 and best["candidates_scored"] == 1
    assert best["acceptance_candidate0"] == best["acceptance_best_of_n"] == 1.0 and best["gain_over_n1"] == 0
    assert len(_edit_jobs(ctx)) == 4
