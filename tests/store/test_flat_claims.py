"""Claims, sweeps and status at store sizes users reach: the claim walks the partial index of
queued jobs (never the finished history), and ``status`` reads counters the database keeps,
which always equal a real count of the jobs table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, text, update

from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import STATUSES, Job, JobEvent, utcnow


def _history(db: Database, finished: int, queued: int, stage: str = "vl") -> None:
    """``finished`` succeeded jobs then ``queued`` queued ones, written in two statements."""
    rows = [{"stage": stage, "status": "succeeded", "key": f"{stage}:done:{i}", "payload": {}, "attempts": 1,
             "max_attempts": 3} for i in range(finished)]
    rows += [{"stage": stage, "status": "queued", "key": f"{stage}:todo:{i}", "payload": {}, "attempts": 0,
              "max_attempts": 3} for i in range(queued)]
    with db.session() as s:
        s.execute(insert(Job), rows[:finished])
        s.execute(insert(Job), rows[finished:])
        if db.dialect == "postgresql":
            s.execute(text("ANALYZE jobs"))


def _true_counts(db: Database) -> dict[str, dict[str, int]]:
    with db.session() as s:
        got = s.execute(select(Job.stage, Job.status, func.count()).group_by(Job.stage, Job.status)).all()
    out: dict[str, dict[str, int]] = {}
    for stage, status, n in got:
        out.setdefault(stage, dict.fromkeys(STATUSES, 0))[status] = n
    return out


def _kept(db: Database) -> dict[str, dict[str, int]]:
    return {stage: by for stage, by in jobstore.counts(db).items() if any(by.values())}


def _plan(db: Database, stmt: Any) -> str:
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as c:
        if db.dialect == "postgresql":
            return json.dumps(c.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar())
        return " | ".join(str(r[-1]) for r in c.execute(text(f"EXPLAIN QUERY PLAN {sql}")))


def test_a_claim_reads_queued_jobs_only_however_long_the_history(db: Database) -> None:
    _history(db, finished=20000, queued=12)
    plan = _plan(db, jobstore.claim_pick("vl", 8, utcnow()))
    assert "ix_jobs_queued" in plan, plan
    if db.dialect == "postgresql":
        node = json.loads(plan)[0]["Plan"]
        scanned = []
        while node:  # the scan under the limit: it removed no finished job by filtering
            scanned.append(node)
            node = (node.get("Plans") or [None])[0]
        index_scan = next(n for n in scanned if n.get("Index Name") == "ix_jobs_queued")
        assert index_scan.get("Rows Removed by Filter", 0) == 0
        assert index_scan["Actual Rows"] <= 12
    got = jobstore.claim(db, "vl", 8)
    assert [j.key for j in got] == [f"vl:todo:{i}" for i in range(8)]


def test_the_sweep_uses_the_index_of_running_leases(db: Database) -> None:
    _history(db, finished=5000, queued=3)
    stmt = select(Job.id).where(jobstore.RUNNING, Job.lease_expires_at < utcnow(), Job.stage == "vl")
    assert "ix_jobs_running_lease" in _plan(db, stmt)


def test_kept_counts_equal_a_real_count_through_every_kind_of_change(db: Database,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobstore, "FOLD_AFTER", 3)  # fold often: the fold path is part of the test
    _history(db, finished=40, queued=10)
    _history(db, finished=5, queued=5, stage="edit")
    assert _kept(db) == _true_counts(db)
    claimed = jobstore.claim(db, "vl", 6)
    assert _kept(db) == _true_counts(db)
    for job in claimed[:2]:
        jobstore.record(db, job, jobstore.Outcome.ok({}))
    jobstore.record(db, claimed[2], jobstore.Outcome.from_error(RuntimeError("try again")))
    assert _kept(db) == _true_counts(db)
    with db.session() as s:  # a lease that ran out, a cancelled job, a deleted one
        s.execute(update(Job).where(Job.id == claimed[3].id).values(lease_expires_at=utcnow()))
        s.execute(update(Job).where(Job.key == "edit:todo:0").values(status="cancelled"))
        s.execute(delete(JobEvent))
        s.execute(delete(Job).where(Job.key == "edit:done:0"))
    jobstore.requeue_expired(db, "vl")
    first, second = _kept(db), _true_counts(db)
    assert first == second
    assert first["vl"]["running"] == 2 and first["edit"]["cancelled"] == 1 and first["edit"]["succeeded"] == 4
    assert _kept(db) == second  # a second read (after a fold on PostgreSQL) says the same


def test_an_upgrade_counts_the_jobs_already_there(db: Database) -> None:
    db.downgrade("0008")
    _history(db, finished=7, queued=2)
    db.upgrade()
    assert _kept(db)["vl"]["succeeded"] == 7 and _kept(db)["vl"]["queued"] == 2
