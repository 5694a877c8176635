"""Best-of-N in local mode on tiny models: `synthpipe run` makes N candidate edits of every
analysed set across an ensemble of two real backends, each candidate once (its own key, seed and
backend), scores each, selects each set's winner, and reports the run's best-of-N figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import ingest_and_pair, stage_context
from sqlalchemy import select

from common.cli import main
from common.domain.editplan import candidate_key, seed_for
from common.store.rows import Analysis, Decision, Edit, ItemSet, Job, Selection

ENSEMBLE = ("instruct-pix2pix", "qwen-image-edit-plus")


@pytest.fixture
def best_of_3(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.devkit.tinymodels import build_one, multi_image_settings

    use_tiny_models(monkeypatch, {name: build_one(name, tiny_dir) for name in ("vl", "edit", "edit-plus")})
    for key, value in {**multi_image_settings(), "SYNTHPIPE_EDIT__CANDIDATES": "3",
                       "SYNTHPIPE_EDIT__ENSEMBLE": ",".join(ENSEMBLE), "SYNTHPIPE_SCORE__SCORERS": "change",
                       "SYNTHPIPE_EDIT__SELECT_BY": "-change.mad"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()


def test_n_candidates_across_two_backends_are_each_made_once_scored_and_one_selected(
        best_of_3: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ingest_and_pair(tmp_path, persons=2, garments=2, characters=0, tryon=2)
    capsys.readouterr()
    assert main(["run", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    ctx = stage_context()
    with ctx.db.session() as s:
        analyses = s.scalars(select(Analysis)).all()
        assert len(analyses) == 2 == ran["vl"]["succeeded"]
        assert ran["edit"] == {"claimed": 6, "succeeded": 6} and ran["score"] == {"claimed": 6, "succeeded": 6}
        for analysis in analyses:
            item = s.get(ItemSet, analysis.item_set_id)
            edits = s.scalars(select(Edit).where(Edit.analysis_id == analysis.id).order_by(Edit.candidate)).all()
            jobs = [s.get(Job, e.job_id) for e in edits]
            # candidate k: its own key (candidate 0 keeps the key N = 1 gives), seed and backend
            assert [e.candidate for e in edits] == [0, 1, 2]
            assert [j.key for j in jobs] == [candidate_key(f"edit:{item.key}", k) for k in range(3)]
            assert [e.seed for e in edits] == [seed_for(j.key) for j in jobs] and len({e.seed for e in edits}) == 3
            assert [e.backend for e in edits] == ["instruct-pix2pix", "qwen-image-edit-plus", "instruct-pix2pix"]
            assert [e.model_id for e in edits] == [ctx.settings.edit_model, ctx.settings.edit.plus_model,
                                                   ctx.settings.edit_model]
            assert [j.payload["backend"] for j in jobs] == [e.backend for e in edits]
            assert all(j.attempts == 1 and j.status == "succeeded" and j.parent_id == analysis.job_id for j in jobs)
            assert {e.output_sha256 for e in edits[::2]} != {edits[1].output_sha256}
            sel = s.get(Selection, analysis.id)
            assert sel is not None and sel.candidates == sel.expected == 3 and sel.rule == "accepted>-change.mad>margin>candidate"
            assert sorted(r["candidate"] for r in sel.ranking) == [0, 1, 2] and "3 of 3 candidates scored" in sel.why
            assert all(r["value"] is not None and r["key"] == "-change.mad" for r in sel.ranking)
            assert sel.edit_id == sel.ranking[0]["edit_id"] and [r["rank"] for r in sel.ranking] == [1, 2, 3]
            decisions = {d.edit_id: d.decision for d in s.scalars(select(Decision).where(
                Decision.edit_id.in_([e.id for e in edits])))}
            assert len(decisions) == 3
            ranked = sel.ranking
            accepted_first = [r["decision"] == "accepted" for r in ranked]
            assert accepted_first == sorted(accepted_first, reverse=True)
            values = [r["value"] for r in ranked if r["decision"] == ranked[0]["decision"]]
            assert values == sorted(values)  # -change.mad: the smaller colour change first
        # nothing was made twice: one edit per edit job, one selection per analysis
        assert len(s.scalars(select(Edit)).all()) == 6 == len(s.scalars(select(Job).where(Job.stage == "edit")).all())
        assert len(s.scalars(select(Selection)).all()) == 2
    best = ran["best_of_n"]
    assert best["sets"] == 2 and best["candidates_made"] == 6 and best["candidates_scored"] == 6
    assert best["candidates_expected"] == 6 and best["extra_candidates_planned"] == 4
    assert sum(best["accepted_per_set"]["histogram"].values()) == 2
    assert best["gain_over_n1"] == pytest.approx(best["acceptance_best_of_n"] - best["acceptance_candidate0"])
    assert best["acceptance_best_of_n"] >= best["acceptance_candidate0"]


def test_the_runs_budget_bounds_the_extra_candidates_it_plans(best_of_3: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_stage

    monkeypatch.setenv("SYNTHPIPE_EDIT__CANDIDATES_MAX_PER_RUN", "3")
    reset_settings()
    ingest_and_pair(tmp_path, persons=3, garments=2, characters=0, tryon=3)
    ctx = stage_context()  # one run: one budget of 3 extra candidates
    assert run_stage("vl", ctx).by_status == {"succeeded": 3}
    with ctx.db.session() as s:
        planned = sorted(j.payload["candidates"] for j in s.scalars(select(Job).where(Job.stage == "edit")))
        per_set = sorted(len(set(s.scalars(select(Job.key).where(Job.stage == "edit", Job.item_set_id == i))))
                         for i in s.scalars(select(ItemSet.id)))
    assert per_set == [1, 2, 3] and planned == [1, 2, 2, 3, 3, 3]  # 2 + 1 extra, then the budget is spent
    assert ctx.candidate_budget is not None and ctx.candidate_budget.used == 3
