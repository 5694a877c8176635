"""Token totals per stage and model (``model_usage``), on SQLite and PostgreSQL: added when a job is
recorded, in its transaction, so a claim that no longer holds its job counts nothing."""

from __future__ import annotations

from common.observability.status import status_report, status_text
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.jobs import Outcome


def _claim(db: Database, n: int) -> list[jobstore.ClaimedJob]:
    with db.session() as s:
        for i in range(n):
            jobstore.enqueue(s, "vl", f"vl:usage:{i}")
    return jobstore.claim(db, "vl", n, worker="t")


def test_recorded_jobs_add_their_tokens_once_per_stage_and_model(db: Database) -> None:
    a, b, c, d = _claim(db, 4)
    spent = {"usage": {"model": "served/m", "prompt_tokens": 100, "completion_tokens": 40}}
    assert jobstore.record(db, a, Outcome.ok(dict(spent))) == "succeeded"
    assert jobstore.record(db, b, Outcome.skip("vl.low_confidence", result=dict(spent))) == "skipped"
    other = {"usage": {"model": "served/other", "prompt_tokens": 5, "completion_tokens": 0}}
    assert jobstore.record(db, c, Outcome.ok(other)) == "succeeded"
    assert jobstore.record(db, a, Outcome.ok(dict(spent))) is None  # no longer held: nothing counted
    assert jobstore.record(db, d, Outcome.ok({"usage": {"model": "x", "prompt_tokens": 0}})) == "succeeded"
    report = status_report(db)
    assert report["tokens"] == [
        {"stage": "vl", "model": "served/m", "requests": 2, "prompt_tokens": 200, "completion_tokens": 80},
        {"stage": "vl", "model": "served/other", "requests": 1, "prompt_tokens": 5, "completion_tokens": 0},
    ]
    assert "tokens: vl served/m: 200 prompt + 80 completion in 2 answers" in status_text(report)


def test_tokens_are_counted_in_the_worker_metrics(db: Database) -> None:
    import pytest

    pytest.importorskip("prometheus_client")
    from common.observability import metrics

    m = metrics._worker_metrics()
    assert m is not None
    registry = m["registry"]

    def value(kind: str) -> float:
        return registry.get_sample_value("synthpipe_model_tokens_total", {"stage": "vl", "kind": kind}) or 0.0

    before = value("prompt"), value("completion")
    (job,) = _claim(db, 1)
    outcome = Outcome.ok({"usage": {"model": "m", "prompt_tokens": 30, "completion_tokens": 12}})
    metrics.job_recorded("vl", jobstore.record(db, job, outcome), outcome)
    assert (value("prompt") - before[0], value("completion") - before[1]) == (30, 12)
