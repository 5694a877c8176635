"""The job state machine every stage shares.

    queued ──claim──► running ──succeed──► succeeded | skipped
      ▲                 │ ├──fail (input/model-output error)──► failed
      │                 │ └──retry (transient) / lease expired──► queued  (or dead at the cap)
      └─────────────────┘

Every transition out of ``running`` is compare-and-set on ``(id, status='running', attempts)``:
``attempts`` is the fencing token of one claim, so a runner whose lease expired and whose job
was claimed again can no longer record anything. Outputs are written in the same transaction
as the transition, so a job's outputs exist exactly when it is recorded as done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, func, insert, literal_column, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.core import stages
from common.core.errors import ErrorKind, InputError, ModelOutputError, code_of, kind_of
from common.store import usage
from common.store.db import Database
from common.store.rows import STATUSES, Job, JobCount, JobCountDelta, JobEvent, utcnow

#: ``status = 'queued'`` written as a literal, not a bound parameter: only then can the planner
#: (PostgreSQL's generic plans, SQLite's) prove that the partial index ``ix_jobs_queued`` applies
QUEUED = Job.status == literal_column("'queued'")
RUNNING = Job.status == literal_column("'running'")

log = logging.getLogger(__name__)

MAX_MESSAGE = 4000


@dataclass(frozen=True)
class ClaimedJob:
    """A job held by one claimer; plain data, safe to use outside any session."""

    id: int
    stage: str
    key: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    item_set_id: int | None
    parent_id: int | None


Writer = Callable[[Session, ClaimedJob], None]


@dataclass
class Outcome:
    """What running one job came to. ``write`` persists its outputs in the recording transaction."""

    status: Literal["succeeded", "skipped", "failed", "retry"]
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    write: Writer | None = field(default=None, repr=False)

    @classmethod
    def ok(cls, result: dict[str, Any] | None = None, write: Writer | None = None) -> Outcome:
        return cls("succeeded", result=result, write=write)

    @classmethod
    def skip(cls, reason: str, message: str = "", result: dict[str, Any] | None = None,
             write: Writer | None = None) -> Outcome:
        """Skipped with the stable reason code ``reason`` (and a sentence for people)."""
        return cls("skipped", result={"reason": reason, "message": message or reason, **(result or {})},
                   write=write)

    @classmethod
    def from_error(cls, exc: BaseException, result: dict[str, Any] | None = None) -> Outcome:
        """Input and model-output errors are final; anything else is worth another attempt."""
        if isinstance(exc, ModelOutputError):
            result = {"raw": exc.raw, **(result or {})}
        final = kind_of(exc) in (ErrorKind.INPUT, ErrorKind.MODEL_OUTPUT)
        return cls("failed" if final else "retry", result=result, error=exc)

    @property
    def reason(self) -> str | None:
        """The stable reason code of this outcome (an error's code, or a skip's reason)."""
        if self.error is not None:
            return code_of(self.error)
        if self.status == "skipped" and self.result:
            return str(self.result.get("reason") or "skipped")
        return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- enqueue -------------------------------------------------------------------------------


def enqueue(
    session: Session,
    stage: str,
    key: str,
    payload: dict[str, Any] | None = None,
    *,
    item_set_id: int | None = None,
    parent_id: int | None = None,
    max_attempts: int | None = None,
) -> int | None:
    """Queue a job unless one with ``key`` exists. Returns the new id, or None if it existed.

    New ids are remembered on the session; after commit the database's dispatcher sends their
    messages (distributed mode).
    """
    stages.get(stage)  # an unknown stage is an error naming the registered ones
    if max_attempts is None:
        max_attempts = session.info["jobs"].max_attempts if "jobs" in session.info else 3
    now = utcnow()
    values = dict(
        stage=stage, status="queued", key=key, payload=payload or {}, item_set_id=item_set_id,
        parent_id=parent_id, attempts=0, max_attempts=max_attempts, created_at=now, updated_at=now,
    )
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = pg_insert(Job).values(**values).on_conflict_do_nothing(index_elements=["key"])
    elif dialect == "sqlite":
        stmt = sqlite_insert(Job).values(**values).on_conflict_do_nothing(index_elements=["key"])
    else:  # pragma: no cover - other databases: check first, rely on the unique key
        if session.scalar(select(Job.id).where(Job.key == key)) is not None:
            return None
        stmt = insert(Job).values(**values)
    new_id = session.execute(stmt.returning(Job.id)).scalar()
    if new_id is not None:
        session.info.setdefault("enqueued", []).append(new_id)
    return new_id


# --- claim ---------------------------------------------------------------------------------


def claim(
    db: Database,
    stage: str,
    n: int,
    *,
    worker: str | None = None,
    lease_s: float | None = None,
    ids: Sequence[int] | None = None,
    lanes: Sequence[str] | None = None,
) -> list[ClaimedJob]:
    """Take up to ``n`` queued jobs of ``stage``; each job goes to exactly one claimer.

    With ``ids``, those jobs are preferred (a Celery message names its job); the rest of the
    batch is filled from the queue in id order. With ``lanes`` (a stage that routes by a payload
    field, :attr:`common.core.stages.Stage.lane_field`: the edit stage by backend), only jobs
    whose payload names one of them are taken.
    """
    if n <= 0:
        return []
    if lease_s is None:
        lease_s = db.jobs.lease_s
    worker = worker or default_worker_id()
    lane = _lane_condition(stage, lanes)
    claimed: list[ClaimedJob] = []
    if ids:
        named = Job.id.in_(list(ids))
        claimed += _claim_where(db, stage, n, worker, lease_s, named if lane is None else and_(named, lane))
    if len(claimed) < n:
        claimed += _claim_where(db, stage, n - len(claimed), worker, lease_s, lane)
    return sorted(claimed, key=lambda j: j.id)


def _lane_condition(stage: str, lanes: Sequence[str] | None) -> Any:
    """Jobs of ``stage`` whose payload names one of ``lanes`` (None: every job)."""
    if not lanes:
        return None
    field_name = stages.get(stage).lane_field
    if field_name is None:
        raise InputError(f"the {stage} stage does not route by lane; it takes no lanes ({', '.join(lanes)})")
    return Job.payload[field_name].as_string().in_(list(lanes))


def claim_pick(stage: str, n: int, now: dt.datetime, extra: Any = None) -> Any:
    """The ids a claim takes: queued jobs of ``stage`` whose backoff is over, oldest first. Its
    shape lets the planner walk ``ix_jobs_queued`` in id order (queued jobs only)."""
    conditions = [Job.stage == stage, QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now)]
    if extra is not None:
        conditions.append(extra)
    return select(Job.id).where(and_(*conditions)).order_by(Job.id).limit(n)


def _claim_where(db: Database, stage: str, n: int, worker: str, lease_s: float, extra: Any) -> list[ClaimedJob]:
    now = utcnow()
    pick = claim_pick(stage, n, now, extra)
    if db.dialect == "postgresql":
        # A materialised CTE runs the locking pick exactly once; as an IN subquery the planner
        # may rescan it, and with SKIP LOCKED each rescan picks further rows past the limit.
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        target = Job.id == picked.c.id
    else:  # SQLite: one UPDATE statement runs under the database's single write lock
        target = Job.id.in_(pick.scalar_subquery())
    stmt = (
        update(Job)
        .where(target)
        .where(Job.status == "queued")
        .values(
            status="running", attempts=Job.attempts + 1, worker=worker,
            lease_expires_at=now + dt.timedelta(seconds=lease_s), started_at=now, updated_at=now,
        )
        .returning(Job.id, Job.stage, Job.key, Job.payload, Job.attempts, Job.max_attempts,
                   Job.item_set_id, Job.parent_id)
    )
    with db.session() as s:
        rows = s.execute(stmt, execution_options={"synchronize_session": False}).all()
    return [ClaimedJob(*row) for row in rows]


def extend_lease(db: Database, jobs: Iterable[ClaimedJob], lease_s: float) -> int:
    """Push the leases of jobs still held by their claim forward; returns how many were held."""
    now = utcnow()
    held = 0
    with db.session() as s:
        for job in jobs:
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == "running", Job.attempts == job.attempts)
                .values(lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now)
            )
            held += res.rowcount  # type: ignore[attr-defined]
    return held


def release(db: Database, jobs: Iterable[ClaimedJob], exc: BaseException) -> list[int]:
    """Put jobs this claim holds back in the queue because the *runner* cannot run them (its
    settings are wrong, not the jobs), with the reason recorded. The attempt is not charged:
    ``max_attempts`` grows by one, so fixing the settings and rerunning loses nothing. No
    message is sent again at once; distributed mode's sweeper resends after ``resend_after_s``.
    Returns the ids released."""
    now = utcnow()
    released = []
    with db.session() as s:
        for job in jobs:
            res = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == "running", Job.attempts == job.attempts)
                .values(status="queued", worker=None, lease_expires_at=None, updated_at=now,
                        max_attempts=Job.max_attempts + 1, error_type=kind_of(exc).value,
                        reason=code_of(exc), error_message=str(exc)[:MAX_MESSAGE] or code_of(exc))
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                released.append(job.id)
    return released


# --- record --------------------------------------------------------------------------------


def record(db: Database, job: ClaimedJob, outcome: Outcome) -> str | None:
    """Record how ``job`` ended, with its outputs, in one transaction.

    Returns the status written, or None when this claim no longer holds the job (its lease
    expired and it went back to the queue, or it was already recorded): then nothing is written.
    """
    jobs_cfg = db.jobs
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now, "lease_expires_at": None}
    status: str = outcome.status
    if outcome.error is not None:
        values["error_type"] = kind_of(outcome.error).value
        values["error_message"] = str(outcome.error)[:MAX_MESSAGE] or code_of(outcome.error)
    values["reason"] = outcome.reason
    if outcome.status == "retry":
        if job.attempts >= job.max_attempts:
            status = "dead"
            values["error_message"] = f"gave up after {job.attempts} attempts: {values.get('error_message', '')}"
            values["finished_at"] = now
        else:
            delay = min(jobs_cfg.backoff_max_s, jobs_cfg.backoff_base_s * 2 ** (job.attempts - 1))
            status = "queued"
            values["not_before"] = now + dt.timedelta(seconds=delay)
            values["worker"] = None
    else:
        values["finished_at"] = now
        if outcome.status in ("succeeded", "skipped"):
            values["error_type"] = values["error_message"] = None
    values["status"] = status
    if outcome.result is not None:
        values["result"] = outcome.result
    with db.session() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "running", Job.attempts == job.attempts)
            .values(**values)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("job %s (attempt %s) is no longer held by this claim; not recording %s",
                        job.id, job.attempts, status)
            s.rollback()
            return None
        if outcome.write is not None and status in ("succeeded", "skipped"):
            outcome.write(s, job)
        if outcome.result is not None:  # tokens an answer cost count whatever became of the job
            usage.add(s, job.stage, outcome.result)
    if status == "queued":
        _after_requeue(db, [job.id])
    return status


def requeue_expired(db: Database, stage: str | None = None) -> list[int]:
    """Return jobs whose lease expired to the queue (or to ``dead`` at the attempts cap).

    Returns the ids put back in the queue, whose messages distributed mode sends again.
    """
    now = utcnow()
    base = [RUNNING, Job.lease_expires_at < now]
    if stage is not None:
        base.append(Job.stage == stage)
    with db.session() as s:
        dead = s.execute(
            update(Job)
            .where(*base, Job.attempts >= Job.max_attempts)
            .values(status="dead", error_type=ErrorKind.TRANSIENT.value, reason="job.lease_expired",
                    finished_at=now, updated_at=now,
                    error_message="lease expired on the last attempt (worker vanished or hung)",
                    lease_expires_at=None)
            .returning(Job.id),
            execution_options={"synchronize_session": False},
        ).scalars().all()
        back = s.execute(
            update(Job)
            .where(*base, Job.attempts < Job.max_attempts)
            .values(status="queued", error_type=ErrorKind.TRANSIENT.value, reason="job.lease_expired",
                    updated_at=now, worker=None,
                    error_message="lease expired (worker vanished or hung); queued again",
                    lease_expires_at=None)
            .returning(Job.id),
            execution_options={"synchronize_session": False},
        ).scalars().all()
    if dead:
        log.warning("jobs %s ended dead: lease expired on the last attempt", list(dead))
    if back:
        log.info("jobs %s went back to the queue: lease expired", list(back))
        _after_requeue(db, list(back))
    return list(back)


def _after_requeue(db: Database, ids: list[int]) -> None:
    if db.dispatcher is not None:
        db.dispatcher(ids)


# --- queries -------------------------------------------------------------------------------


def counts(db: Database) -> dict[str, dict[str, int]]:
    """Jobs per stage and status, every stage and status present.

    Read from ``job_counts`` (kept by triggers), not by counting jobs: a handful of rows at
    any store size. On PostgreSQL the changes since the last fold wait in ``job_count_deltas``;
    once more than :data:`FOLD_AFTER` wait, this call folds them in (one statement: a
    concurrent fold or reader never counts a change twice).
    """
    out = {stage: dict.fromkeys(STATUSES, 0) for stage in stages.names()}
    with db.session() as s:
        if db.dialect == "postgresql":
            if (s.scalar(select(func.count()).select_from(
                    select(JobCountDelta.id).limit(FOLD_AFTER + 1).subquery())) or 0) > FOLD_AFTER:
                s.execute(text(_FOLD_DELTAS))
            rows = s.execute(select(JobCount.stage, JobCount.status, JobCount.n).union_all(
                select(JobCountDelta.stage, JobCountDelta.status, JobCountDelta.delta))).all()
        else:
            rows = s.execute(select(JobCount.stage, JobCount.status, JobCount.n)).all()
    for stage, status, n in rows:
        by = out.setdefault(stage, dict.fromkeys(STATUSES, 0))
        by[status] = by.get(status, 0) + int(n)
    return out


#: fold the waiting count changes into ``job_counts`` once more than this many wait
FOLD_AFTER = 1000
_FOLD_DELTAS = """
WITH moved AS (DELETE FROM job_count_deltas RETURNING stage, status, delta),
     summed AS (SELECT stage, status, sum(delta) AS n FROM moved GROUP BY stage, status)
INSERT INTO job_counts (stage, status, n)
SELECT stage, status, n FROM summed ORDER BY stage, status
ON CONFLICT (stage, status) DO UPDATE SET n = job_counts.n + EXCLUDED.n
"""


def next_not_before(db: Database, stage: str) -> dt.datetime | None:
    """When the earliest backed-off queued job of ``stage`` may run, if any waits."""
    with db.session() as s:
        value = s.scalar(
            select(func.min(Job.not_before)).where(Job.stage == stage, QUEUED)
        )
    return as_utc(value) if value is not None else None


def pending(db: Database, stage: str) -> int:
    """Jobs of ``stage`` that are queued or running."""
    with db.session() as s:  # two counts, each over its partial index
        return sum(s.scalar(select(func.count()).where(Job.stage == stage, live)) or 0 for live in (QUEUED, RUNNING))


def _filtered(stage: str | None, statuses: Sequence[str] | None, reason: str | None) -> list[Any]:
    conditions: list[Any] = []
    if stage is not None:
        conditions.append(Job.stage == stage)
    if statuses:
        conditions.append(Job.status.in_(list(statuses)))
    if reason is not None:
        conditions.append(Job.reason == reason)
    return conditions


def list_jobs(db: Database, *, stage: str | None = None, statuses: Sequence[str] | None = None,
              reason: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Jobs matching the filters, newest first, as plain rows."""
    with db.session() as s:
        rows = s.execute(select(Job).where(*_filtered(stage, statuses, reason)).order_by(Job.id.desc())
                         .limit(limit)).scalars().all()
        return [{"id": j.id, "stage": j.stage, "status": j.status, "key": j.key, "attempts": j.attempts,
                 "max_attempts": j.max_attempts, "reason": j.reason, "error_kind": j.error_type,
                 "error_message": j.error_message, "updated_at": j.updated_at.isoformat()} for j in rows]


def _change(db: Database, action: str, to_status: str, conditions: list[Any], actor: str | None,
            extra: dict[str, Any]) -> list[int]:
    """Move every job matching ``conditions`` to ``to_status`` and record a ``JobEvent`` each."""
    with db.session() as s:
        return _change_in(s, action, to_status, conditions, actor, extra)


def _change_in(s: Session, action: str, to_status: str, conditions: list[Any], actor: str | None,
               extra: dict[str, Any]) -> list[int]:
    """:func:`_change` in the caller's transaction."""
    actor = actor or f"{os.environ.get('USER', 'user')}@{socket.gethostname()}"
    now = utcnow()
    rows = s.execute(select(Job.id, Job.status).where(*conditions).with_for_update()).all()
    ids = [r[0] for r in rows]
    if not ids:
        return []
    s.execute(update(Job).where(Job.id.in_(ids), *conditions).values(status=to_status, updated_at=now, **extra),
              execution_options={"synchronize_session": False})
    for job_id, before in rows:
        s.add(JobEvent(job_id=job_id, action=action, from_status=before, to_status=to_status, actor=actor,
                       created_at=now))
    if to_status == "queued":
        s.info.setdefault("enqueued", []).extend(ids)  # distributed mode sends their messages
    return ids


def cancel_queued_in(session: Session, conditions: list[Any], *, reason: str, actor: str) -> list[int]:
    """Cancel the queued jobs matching ``conditions`` in ``session``'s transaction, with the reason
    code ``reason`` (a step that ends its own followers, e.g. best-of-N's ``edit.early_stop``), each
    change recorded as a ``JobEvent`` as ``jobs cancel`` records it; returns their ids."""
    return _change_in(session, "cancel", "cancelled", [*conditions, QUEUED], actor,
                      {"finished_at": utcnow(), "reason": reason})


def retry_jobs(db: Database, *, stage: str | None = None, statuses: Sequence[str] = ("failed", "dead"),
               reason: str | None = None, actor: str | None = None) -> list[int]:
    """Put failed/dead (or cancelled) jobs back in the queue with fresh attempts; returns their ids."""
    allowed = {"failed", "dead", "cancelled"}
    if not set(statuses) <= allowed:

        raise InputError(f"retry takes jobs that ended ({', '.join(sorted(allowed))}), not {', '.join(statuses)}")
    return _change(db, "retry", "queued", _filtered(stage, statuses, reason), actor,
                   {"attempts": 0, "not_before": None, "worker": None, "lease_expires_at": None,
                    "finished_at": None})


def cancel_jobs(db: Database, *, stage: str | None = None, statuses: Sequence[str] = ("queued",),
                reason: str | None = None, actor: str | None = None) -> list[int]:
    """Cancel queued jobs (a running job finishes first: cancel it after); returns their ids."""
    if set(statuses) - {"queued", "failed", "dead"}:

        raise InputError("cancel takes queued, failed or dead jobs; a running job is cancelled once it ends")
    return _change(db, "cancel", "cancelled", _filtered(stage, statuses, reason), actor,
                   {"finished_at": utcnow(), "reason": "job.cancelled"})


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


__all__ = [
    "ClaimedJob",
    "Outcome",
    "claim",
    "counts",
    "enqueue",
    "extend_lease",
    "record",
    "requeue_expired",
]
