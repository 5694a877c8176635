"""The job state machine on SQLite and on the real PostgreSQL on 127.0.0.1."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from common.core.errors import ConfigError, InputError, TransientError
from common.store import jobs as jobstore
from common.store.db import Database, get_database
from common.store.jobs import Outcome
from common.store.rows import Job


def _queue(db: Database, n: int, stage: str = "vl", max_attempts: int = 3) -> list[int]:
    ids = []
    with db.session() as s:
        for i in range(n):
            new = jobstore.enqueue(s, stage, f"{stage}:test:{i}", {"i": i}, max_attempts=max_attempts)
            assert new is not None
            ids.append(new)
    return ids


def _job(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_migrations_up_down_up(db: Database) -> None:
    assert db.current_revision() == db.head_revision()
    db.downgrade("base")
    assert db.current_revision() is None
    from sqlalchemy import inspect

    assert "jobs" not in inspect(db.engine).get_table_names()
    db.upgrade()
    assert {"assets", "item_sets", "item_set_assets", "jobs", "analyses", "edits"} <= set(
        inspect(db.engine).get_table_names()
    )


def test_enqueue_is_idempotent(db: Database) -> None:
    with db.session() as s:
        first = jobstore.enqueue(s, "vl", "vl:same", {"a": 1})
        again = jobstore.enqueue(s, "vl", "vl:same", {"a": 2})
    assert first is not None and again is None
    assert jobstore.counts(db)["vl"]["queued"] == 1
    with pytest.raises(ConfigError, match="unknown stage"), db.session() as s:
        jobstore.enqueue(s, "paint", "x")


def test_claim_hands_each_job_once_and_records(db: Database) -> None:
    ids = _queue(db, 5)
    a = jobstore.claim(db, "vl", 3, worker="a")
    b = jobstore.claim(db, "vl", 3, worker="b")
    assert [j.id for j in a] == ids[:3] and [j.id for j in b] == ids[3:]
    assert jobstore.claim(db, "vl", 3) == []
    assert all(j.attempts == 1 for j in a + b)
    assert jobstore.record(db, a[0], Outcome.ok({"x": 1})) == "succeeded"
    assert jobstore.record(db, a[1], Outcome.from_error(InputError("bad photo"))) == "failed"
    assert jobstore.record(db, a[2], Outcome.skip("vl.low_confidence", "confidence 0.1 below 0.5")) == "skipped"
    assert _job(db, a[1].id).error_message == "bad photo"
    assert _job(db, a[1].id).error_type == "input" and _job(db, a[1].id).reason == "input.invalid"
    assert _job(db, a[2].id).result == {"reason": "vl.low_confidence", "message": "confidence 0.1 below 0.5"}
    assert _job(db, a[2].id).reason == "vl.low_confidence"
    # recording twice is refused: the claim no longer holds the job
    assert jobstore.record(db, a[0], Outcome.ok({"x": 2})) is None
    assert _job(db, a[0].id).result == {"x": 1}


def test_claim_prefers_named_ids(db: Database) -> None:
    ids = _queue(db, 6)
    got = jobstore.claim(db, "vl", 3, ids=[ids[4]])
    assert [j.id for j in got] == [ids[0], ids[1], ids[4]]


def test_retry_backs_off_then_dead_at_cap(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import get_settings, reset_settings

    monkeypatch.setenv("SYNTHPIPE_JOBS__BACKOFF_BASE_S", "1.5")  # long enough to observe on a busy machine
    reset_settings()
    db.jobs = get_settings().jobs  # the job store takes its settings from its caller
    (jid,) = _queue(db, 1, max_attempts=2)
    (j1,) = jobstore.claim(db, "vl", 1)
    assert jobstore.record(db, j1, Outcome.from_error(TransientError("GPU busy"))) == "queued"
    assert jobstore.claim(db, "vl", 1) == []  # backing off
    time.sleep(1.7)
    (j2,) = jobstore.claim(db, "vl", 1)
    assert j2.attempts == 2
    assert jobstore.record(db, j2, Outcome.from_error(TransientError("GPU busy again"))) == "dead"
    job = _job(db, jid)
    assert job.status == "dead" and "gave up after 2 attempts" in (job.error_message or "")
    assert "GPU busy again" in (job.error_message or "")


def test_stale_claim_cannot_record_after_lease_expired(db: Database) -> None:
    (jid,) = _queue(db, 1)
    (old,) = jobstore.claim(db, "vl", 1, lease_s=0.1)
    time.sleep(0.2)
    assert jobstore.requeue_expired(db, "vl") == [jid]
    (new,) = jobstore.claim(db, "vl", 1)
    assert new.attempts == 2
    assert jobstore.record(db, old, Outcome.ok({"from": "old"})) is None
    assert jobstore.record(db, new, Outcome.ok({"from": "new"})) == "succeeded"
    assert _job(db, jid).result == {"from": "new"}


def test_writer_runs_in_the_recording_transaction(db: Database) -> None:
    (jid,) = _queue(db, 1)
    (job,) = jobstore.claim(db, "vl", 1)

    def write(session, claimed):  # type: ignore[no-untyped-def]
        jobstore.enqueue(session, "edit", f"edit:after:{claimed.id}", {"parent": claimed.id})
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        jobstore.record(db, job, Outcome.ok({"done": True}, write=write))
    # neither the state change nor the follow-up job was written
    assert _job(db, jid).status == "running"
    assert jobstore.counts(db)["edit"]["queued"] == 0


# --- several processes ---------------------------------------------------------------------


def _claimer(url: str, out: str, batch: int, ready: Any) -> None:
    from common.store.db import get_database

    db = get_database(url, ensure=False)
    db.engine.connect().close()
    ready.wait(60)  # start claiming together: a process still importing would find nothing left
    got: list[int] = []
    while True:
        jobs = jobstore.claim(db, "vl", batch, worker=f"p{os.getpid()}")
        if not jobs:
            break
        got += [j.id for j in jobs]
    Path(out).write_text(json.dumps(got))


def test_concurrent_claimers_never_share_a_job(db: Database, tmp_path: Path) -> None:
    ids = set(_queue(db, 1000))
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"claimed-{i}.json" for i in range(4)]
    ready = ctx.Barrier(len(outs))
    procs = [ctx.Process(target=_claimer, args=(db.url, str(o), 7, ready)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    per_proc = [json.loads(o.read_text()) for o in outs]
    flat = [i for got in per_proc for i in got]
    assert len(flat) == len(set(flat)), "a job was handed to two claimers"
    assert set(flat) == ids
    assert sum(1 for got in per_proc if got) >= 2, "only one process ever claimed"


CLAIM_AND_HANG = """
import sys, time
from common.store import jobs
from common.store.db import get_database
db = get_database(sys.argv[1], ensure=False)
got = jobs.claim(db, "vl", 5, worker="doomed", lease_s=float(sys.argv[2]))
print(",".join(str(j.id) for j in got), flush=True)
time.sleep(600)
"""


def test_killed_claimers_jobs_come_back_after_the_lease(db: Database) -> None:
    ids = _queue(db, 8)
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HANG, db.url, "3.0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    held = [int(x) for x in proc.stdout.readline().strip().split(",")]
    assert held == ids[:5]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert jobstore.requeue_expired(db, "vl") == []  # lease not yet over
    time.sleep(3.1)
    assert sorted(jobstore.requeue_expired(db, "vl")) == held
    again = jobstore.claim(db, "vl", 10)
    assert [j.id for j in again] == ids
    assert {j.attempts for j in again if j.id in held} == {2}


def test_lease_expiry_on_last_attempt_is_dead(db: Database) -> None:
    (jid,) = _queue(db, 1, max_attempts=1)
    jobstore.claim(db, "vl", 1, lease_s=0.05)
    time.sleep(0.1)
    assert jobstore.requeue_expired(db) == []
    job = _job(db, jid)
    assert job.status == "dead" and job.reason == "job.lease_expired"


def test_status_counts_have_every_stage_and_status(db: Database) -> None:
    _queue(db, 2, stage="edit")
    counts = jobstore.counts(db)
    from common.core import stages

    assert set(counts) == set(stages.names()) >= {"scrape", "vl", "edit", "score", "train", "generate"}
    for by in counts.values():
        assert set(by) == {"queued", "running", "succeeded", "skipped", "failed", "dead", "cancelled"}
    assert counts["edit"]["queued"] == 2 and counts["vl"]["queued"] == 0


def test_rows_survive_a_new_engine(db: Database) -> None:
    _queue(db, 3)
    fresh = Database(db.url)
    with fresh.session() as s:
        assert len(s.scalars(select(Job)).all()) == 3
    fresh.dispose()
    assert get_database(db.url, ensure=False) is not fresh
