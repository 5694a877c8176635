"""``score --redecide`` in committed chunks: the same decisions, reasons and margins as deciding
edit by edit (``decide_edit``), on SQLite and PostgreSQL; a run killed or failed part-way keeps
the chunks it committed, and a rerun finishes the rest."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.store.db import Database
from common.store.rows import Asset, Decision, Edit, ItemSet, Score

ROOT = Path(__file__).resolve().parents[2]

#: thresholds that differ from the defaults, so most stored decisions change when re-decided
NEW_THRESHOLDS = {
    "SYNTHPIPE_SCORE__TRYON__IDENTITY_MAX": "0.45",
    "SYNTHPIPE_SCORE__TRYON__SSIM_MAX": "0.97",
    "SYNTHPIPE_SCORE__TRYON__MAD_MAX": "0.3",
    "SYNTHPIPE_SCORE__ENRICH__CLIP_IMAGE_MIN": "0.8",
    "SYNTHPIPE_SCORE__ENRICH__JUDGE_MIN": "5",
}

#: every metric a rule or check reads, by scorer, with the range values are drawn from
METRICS: dict[str, dict[str, tuple[float, float]]] = {
    "change": {"ssim": (0.9, 1.0), "mad": (0.0, 0.4)},
    "identity": {"identity_distance": (0.2, 0.8), "faces_input": (0, 2), "faces_edited": (0, 2)},
    "clip": {"clip_image": (0.6, 0.95), "clip_direction": (0.1, 0.4), "clip_text": (0.1, 0.35)},
    "dino": {"dino_similarity": (0.3, 0.9)},
    "garment": {"garment_max": (0.2, 0.5)},
    "judge": {"judge_overall": (3.0, 10.0)},
}
DecisionRow = tuple[str, list[str], dict[str, Any], dict[str, Any], float | None]


def _metrics(rng: random.Random, scorer: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (lo, hi) in METRICS[scorer].items():
        roll = rng.random()
        if roll < 0.07:
            continue  # a metric the scorer did not compute
        if roll < 0.12:
            out[name] = None  # ... or stored as null
        elif isinstance(lo, int):
            out[name] = rng.randint(lo, int(hi))
        else:
            out[name] = round(rng.uniform(lo, hi), 4)
    if scorer == "change" and rng.random() < 0.15:  # unchanged edits, for no_change
        out.update(ssim=round(rng.uniform(0.98, 1.0), 4), mad=round(rng.uniform(0.0, 0.02), 4))
    return out


def _build(db: Database, edits: int, seed: int = 7) -> list[int]:
    """A store of ``edits`` edits over try-on and enrich sets: most with some of six scorers'
    scores (metrics missing or null, scorer errors, a judge that failed), some with none; some
    with a stale decision. Returns the ids of the edits that have scores."""
    rng = random.Random(seed)
    with db.session() as s:
        asset = s.execute(insert(Asset).returning(Asset.id), [{
            "sha256": "a" * 64, "phash": "0" * 16, "size_bytes": 1, "format": "JPEG", "width": 8, "height": 8,
            "role": "person", "uri": "file:///nowhere.jpg"}]).scalar_one()
        assert asset
        sets = s.execute(insert(ItemSet).returning(ItemSet.id, ItemSet.recipe), [
            {"key": f"set-{i}", "recipe": ("tryon", "enrich")[i % 2]} for i in range(6)]).all()
        edit_ids = s.execute(insert(Edit).returning(Edit.id), [{
            "item_set_id": sets[i % len(sets)][0], "origin": "imported", "import_key": f"e-{i}", "backend": "b",
            "model_id": "m", "params": {}, "seed": i, "output_uri": "file:///out.png", "output_sha256": "0" * 64,
            "width": 8, "height": 8, "timings": {}} for i in range(edits)]).scalars().all()
        scores: list[dict[str, Any]] = []
        decisions: list[dict[str, Any]] = []
        scored: list[int] = []
        for edit_id in sorted(edit_ids):
            if rng.random() < 0.08:
                continue  # not scored yet
            before = len(scores)
            for scorer in METRICS:
                roll = rng.random()
                if roll < 0.15:
                    continue  # this scorer never ran on it
                row = {"edit_id": edit_id, "scorer": scorer, "metrics": {}, "params": {}}
                if roll < 0.23:
                    row["error_code"] = f"{scorer}.failed"
                    row["error_kind"] = "model_output" if scorer == "judge" else "input"
                elif roll < 0.25:
                    row["error_code"] = ""  # an empty code is not an error: its metrics count
                    row["metrics"] = _metrics(rng, scorer)
                elif roll > 0.98:
                    pass  # a score with no metrics at all
                else:
                    row["metrics"] = _metrics(rng, scorer)
                scores.append(row)
            if len(scores) > before:
                scored.append(edit_id)
                if rng.random() < 0.6:
                    decisions.append({"edit_id": edit_id, "decision": rng.choice(["accepted", "rejected"]),
                                      "reasons": ["stale"], "failed": {}, "thresholds": {}, "margin": 0.5})
        s.execute(insert(Score), scores)
        s.execute(insert(Decision), decisions)
    return scored


def _decisions(db: Database) -> dict[int, DecisionRow]:
    with db.session() as s:
        return {d.edit_id: (d.decision, list(d.reasons), dict(d.failed), dict(d.thresholds), d.margin)
                for d in s.execute(select(Decision)).scalars()}


def _settings():  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings, reset_settings

    reset_settings()
    return get_settings()


def _per_edit_reference(db: Database, settings: Any) -> tuple[dict[int, DecisionRow], dict[str, Any]]:
    """What deciding edit by edit with ``decide_edit`` (the path before chunks) writes and reports;
    rolled back, so the store is left as it was."""
    from common.domain.decide import decide_edit

    before = {k: v[0] for k, v in _decisions(db).items()}
    with Session(db.engine) as s:
        after, reasons = {}, {}
        for edit_id in sorted(set(s.execute(select(Score.edit_id).distinct()).scalars())):
            result = decide_edit(s, edit_id, settings)
            if result is None:
                continue
            after[edit_id] = result.decision
            for code in result.reasons:
                reasons[code] = reasons.get(code, 0) + 1
        s.flush()
        rows = {d.edit_id: (d.decision, list(d.reasons), dict(d.failed), dict(d.thresholds), d.margin)
                for d in s.execute(select(Decision)).scalars()}
        s.rollback()
    report = {"decided": len(after), "changed": sum(1 for k, v in after.items() if before.get(k) != v),
              "accepted": sum(v == "accepted" for v in after.values()),
              "rejected": sum(v == "rejected" for v in after.values()), "reasons": dict(sorted(reasons.items()))}
    return rows, report


def test_chunked_redecide_writes_what_deciding_edit_by_edit_writes(db: Database,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from common.domain.decide import REASON_CODES, redecide_all

    scored = _build(db, 400)
    for key, value in NEW_THRESHOLDS.items():
        monkeypatch.setenv(key, value)
    settings = _settings()
    expected, expected_report = _per_edit_reference(db, settings)
    assert expected_report["changed"] > len(scored) // 2  # the store is far from where the run takes it
    # the mix reaches every kind of outcome, so the comparison covers them
    assert sorted(expected) == scored
    reached = {code for row in expected.values() for code in row[1]}
    assert reached >= set(REASON_CODES) - {"ssim_too_low"}, sorted(set(REASON_CODES) - reached)
    assert {row[0] for row in expected.values()} == {"accepted", "rejected"}
    assert {row[3]["recipe"] for row in expected.values()} == {"tryon", "enrich"}

    report = redecide_all(db, settings, chunk=7)
    assert report.chunks == -(-len(scored) // 7)
    got = _decisions(db)
    assert got.keys() == expected.keys()
    for edit_id, row in expected.items():
        assert got[edit_id] == row, edit_id
    assert {k: v for k, v in report.as_dict().items() if k != "chunks"} == expected_report

    # a rerun of a finished run changes nothing
    again = redecide_all(db, settings, chunk=50)
    assert again.changed == 0 and again.decided == len(scored)
    assert _decisions(db) == got


def test_a_bad_score_row_fails_its_chunk_only_and_a_rerun_after_the_fix_finishes(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.domain.decide import redecide_all

    scored = _build(db, 120)
    stale = _decisions(db)
    for key, value in NEW_THRESHOLDS.items():
        monkeypatch.setenv(key, value)
    settings = _settings()
    expected, _ = _per_edit_reference(db, settings)
    bad_edit = scored[len(scored) // 2]  # in chunk 5 of 10-edit chunks, at least
    with db.session() as s:
        bad = s.execute(select(Score).where(Score.edit_id == bad_edit, Score.error_code.is_(None)).limit(1)).scalar_one()
        bad_id, good_metrics = bad.id, dict(bad.metrics)
        s.execute(update(Score).where(Score.id == bad_id).values(metrics={"ssim": "n/a", "mad": 0.1}))

    with pytest.raises(InputError, match=f"edit {bad_edit}:"):
        redecide_all(db, settings, chunk=10)
    chunk_of_bad = scored.index(bad_edit) // 10
    done = set(scored[:chunk_of_bad * 10])
    got = _decisions(db)
    for edit_id in scored:
        if edit_id in done:
            assert got[edit_id] == expected[edit_id], edit_id  # committed before the bad chunk
        else:
            assert got.get(edit_id) == stale.get(edit_id), edit_id  # the failed chunk and the rest: untouched

    with db.session() as s:
        s.execute(update(Score).where(Score.id == bad_id).values(metrics=good_metrics))
    report = redecide_all(db, settings, chunk=10)
    assert report.decided == len(scored)
    assert _decisions(db) == expected


KILLABLE = """
import os, sys, time
from common.core.settings import get_settings
from common.domain.decide import redecide_all
from common.store.db import get_database

settings = get_settings()
stop_after = int(sys.argv[1])

def on_chunk(n):
    on_chunk.done += 1
    print(on_chunk.done, flush=True)
    if on_chunk.done == stop_after:
        time.sleep(60)  # killed here: after its chunks committed, before the next one

on_chunk.done = 0
redecide_all(get_database(settings.database_url, settings=settings), settings, chunk=int(sys.argv[2]),
             on_chunk=on_chunk)
"""


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_redecide_killed_mid_way_keeps_its_committed_chunks_and_a_rerun_completes(
        db: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli import main

    scored = _build(db, 200)
    stale = _decisions(db)
    for key, value in NEW_THRESHOLDS.items():
        monkeypatch.setenv(key, value)
    expected, _ = _per_edit_reference(db, _settings())
    changed = {e for e in scored if stale.get(e) != expected[e]}
    assert len(changed) > len(scored) // 2

    child = subprocess.Popen([sys.executable, "-c", KILLABLE, "3", "20"], cwd=ROOT, env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline().strip() for _ in range(3)]
        assert lines == ["1", "2", "3"], (lines, child.stderr.read() if child.poll() is not None else "")
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    got = _decisions(db)
    done = set(scored[:60])
    assert {e for e in scored if got.get(e) == expected[e]} >= done
    for edit_id in scored:
        if edit_id not in done:
            assert got.get(edit_id) == stale.get(edit_id), edit_id  # past the kill: as before the run

    # the killed run holds no lock: a rerun through the CLI decides everything
    capsys.readouterr()
    assert main(["score", "--redecide", "--chunk", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decided"] == len(scored) and report["chunks"] == -(-len(scored) // 20)
    stale_decision = {e: row[0] for e, row in stale.items()}
    assert report["changed"] == sum(1 for e in scored if e not in done and stale_decision.get(e) != expected[e][0])
    assert _decisions(db) == expected
