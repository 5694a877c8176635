"""Best-of-N selection: the documented rule (accepted first, then the key metric, ties by margin,
then candidate number), written by the same calls the score stage makes (``decide_edit`` then
``select_for_analysis``) on SQLite and PostgreSQL; ``score --redecide`` re-selects with new
thresholds in a process that loads no model; a person's overrule survives every re-selection;
two candidates decided at once on PostgreSQL are selected one after the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest
from fixtures.best_of_n import make_set, score
from sqlalchemy import select, text

from common.core.settings import get_settings, reset_settings
from common.domain.decide import decide_edit
from common.domain.selection import (
    CandidateRow,
    SelectKey,
    effective_selection,
    passed_over,
    rank_candidates,
    reselect_all,
    select_for_analysis,
)
from common.store.db import Database
from common.store.rows import Selection, utcnow

REDECIDE_PROBE = """
import json, sys
from common.cli import main
code = main(["score", "--redecide", "--json"])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "diffusers", "worker_score", "worker_edit"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_rank_candidates_puts_accepted_first_then_the_metric_then_margin_then_the_number() -> None:
    def c(k: int, decision: str, value: float | None, margin: float | None) -> CandidateRow:
        return CandidateRow(edit_id=100 + k, candidate=k, backend="b", seed=k, decision=decision, margin=margin,
                            value=value)

    pool = [c(0, "accepted", 8.0, 0.04), c(1, "rejected", 9.0, 0.5), c(2, "accepted", 8.0, 0.1),
            c(3, "accepted", None, 0.9), c(4, "accepted", 8.0, 0.1), c(5, "rejected", None, None),
            c(6, "rejected", float("nan"), 0.2)]
    higher = [x.candidate for x in rank_candidates(pool, SelectKey.parse("judge.judge_overall"))]
    assert higher == [2, 4, 0, 3, 1, 6, 5]  # 2 and 4 tie on value and margin: the lower number first
    lower = [x.candidate for x in rank_candidates(pool, SelectKey.parse("-judge.judge_overall"))]
    assert lower == [2, 4, 0, 3, 1, 6, 5]  # every accepted value is 8.0 here: the same order
    pool.append(c(7, "accepted", 7.5, 0.01))
    assert [x.candidate for x in rank_candidates(pool, SelectKey.parse("-judge.judge_overall"))][:2] == [7, 2]
    assert [x.candidate for x in rank_candidates(pool, SelectKey.parse("margin"))] == [3, 2, 4, 0, 7, 1, 6, 5]
    assert SelectKey.parse("margin").rule == "accepted>margin>candidate"
    assert SelectKey.parse("-identity.identity_distance").rule == "accepted>-identity.identity_distance>margin>candidate"


def _selection(db: Database, analysis_id: int) -> dict[str, Any]:
    with db.session() as s:
        row = s.get(Selection, analysis_id)
        assert row is not None
        return {"edit_id": row.edit_id, "order": [r["candidate"] for r in row.ranking], "rule": row.rule,
                "why": row.why, "candidates": row.candidates, "expected": row.expected, "ranking": row.ranking,
                "person": (row.person_edit_id, row.person_note)}


def test_selection_follows_the_rule_redecide_reselects_without_models_and_a_person_overrule_stays(
        db: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    analysis_id, ids = make_set(db, 4)
    score(db, ids[:2])  # two of four scored: the best so far, counted as such
    early = _selection(db, analysis_id)
    assert early["order"] == [0, 1] and early["candidates"] == 2 and early["expected"] == 4
    assert early["edit_id"] == ids[0] and "2 of 4 candidates scored" in early["why"]
    score(db, ids[2:] + ids[:1])  # the rest, and candidate 0 again (a retried score job): still one row
    sel = _selection(db, analysis_id)
    assert sel["order"] == [2, 0, 3, 1]  # 2 beats 0 on margin at the same judge score; 3 has no judge score
    assert sel["edit_id"] == ids[2] and sel["candidates"] == sel["expected"] == 4
    assert sel["rule"] == "accepted>judge.judge_overall>margin>candidate"
    first = sel["ranking"][0]
    assert first == {"rank": 1, "edit_id": ids[2], "candidate": 2, "backend": "instruct-pix2pix", "seed": 1002,
                     "decision": "accepted", "reasons": [], "key": "judge.judge_overall", "value": 8.0,
                     "margin": pytest.approx(0.1)}
    assert sel["ranking"][-1]["reasons"] == ["no_change"]
    assert sel["why"].startswith(f"edit {ids[2]} (candidate 2, instruct-pix2pix) accepted with judge.judge_overall 8")
    with db.session() as s:
        assert len(s.scalars(select(Selection)).all()) == 1
        assert set(s.scalars(passed_over())) == {ids[0], ids[1], ids[3]}

    # new thresholds, redecided in a process that must import no model library: a new winner
    env = {**os.environ, "SYNTHPIPE_SCORE__TRYON__JUDGE_MIN": "8.5"}
    probe = subprocess.run([sys.executable, "-c", REDECIDE_PROBE], env=env, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    report, loaded = (json.loads(line) for line in probe.stdout.strip().splitlines()[-2:])
    assert loaded == {"code": 0, "heavy": []}
    assert report["reselected"] == {"sets": 1, "changed": 1, "chunks": 1}
    sel = _selection(db, analysis_id)
    assert sel["order"] == [3, 1, 2, 0] and sel["edit_id"] == ids[3]  # rejected ones by judge, then margin

    # a person overrules (the review side writes these columns): no re-selection touches them
    with db.session() as s:
        row = s.get(Selection, analysis_id)
        row.person_edit_id, row.person_note, row.person_at = ids[0], "the sleeves are right", utcnow()  # type: ignore[union-attr]
    monkeypatch.setenv("SYNTHPIPE_SCORE__TRYON__JUDGE_MIN", "7")
    reset_settings()
    capsys.readouterr()
    from common.cli import main

    assert main(["score", "--redecide", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reselected"]["changed"] == 1
    score(db, [ids[1]])  # and a live selection (a candidate scored again)
    sel = _selection(db, analysis_id)
    assert sel["edit_id"] == ids[2] and sel["person"] == (ids[0], "the sleeves are right")
    with db.session() as s:
        assert dict(s.execute(effective_selection()).all()) == {analysis_id: ids[0]}
        assert set(s.scalars(passed_over())) == {ids[1], ids[2], ids[3]}


def test_a_plain_single_edit_gets_no_selection_and_keeps_todays_meaning(db: Database) -> None:
    analysis_id, (only,) = make_set(db, 1, key="one")  # N = 1, no ensemble: the payload names no backend
    score(db, [only])
    with db.session() as s:
        assert s.get(Selection, analysis_id) is None and list(s.scalars(passed_over())) == []
    assert reselect_all(db, get_settings()).as_dict() == {"sets": 0, "changed": 0, "chunks": 0}


@pytest.mark.postgres
def test_two_candidates_decided_at_once_are_selected_one_after_the_other(pg_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two score jobs of one set recorded at the same moment (two workers): the second waits for
    the first's lock on the set and then sees its decision, so the selection counts both."""
    from common.store.db import get_database

    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", pg_url)
    reset_settings()
    db = get_database(pg_url, ensure=False)
    db.upgrade()
    analysis_id, ids = make_set(db, 2, key="race")
    settings = get_settings()
    first_selected, second_done = threading.Event(), threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with db.session() as s:
                decide_edit(s, ids[0], settings)
                select_for_analysis(s, analysis_id, settings)
                first_selected.set()
                assert release.wait(60)
        except BaseException as exc:  # noqa: BLE001  (reported by the test thread)
            errors.append(exc)
            first_selected.set()

    def second() -> None:
        try:
            with db.session() as s:
                decide_edit(s, ids[1], settings)
                select_for_analysis(s, analysis_id, settings)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        second_done.set()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_selected.wait(60) and not errors
    t2 = threading.Thread(target=second)
    t2.start()

    def waiting_on_a_lock() -> bool:
        with db.engine.connect() as c:
            return bool(c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()")).scalar())

    from fixtures.net import wait_for

    wait_for(waiting_on_a_lock, 30, "the second selection to wait for the first's lock")
    assert not second_done.is_set()
    release.set()
    t1.join(60)
    assert second_done.wait(60) and not errors, errors
    t2.join(60)
    sel = _selection(db, analysis_id)
    assert sel["candidates"] == 2 and sorted(sel["order"]) == [0, 1]
