"""Distributed mode's glue: sending job messages, running a job from a message, sweeping.

- ``install_dispatcher(db)``: after a transaction commits, every job it queued gets its
  message (delayed to the job's ``not_before`` when it is backing off). A send that fails is
  only logged: the sweeper sends it again.
- ``run_job(stage, job_id)``: what every Celery task does: claim the named job plus up to B-1
  more of the stage, run them as one batch through the same stage function as local mode,
  record. A message whose job is already done or held elsewhere claims nothing new: a no-op.
  With ``jobs.overlap`` a stage with phases goes on claiming (up to ``jobs.overlap_batches``
  batches, for at most ``jobs.overlap_task_share`` of the soft time limit) so that batch k+1
  is prepared and k-1 recorded while the model runs batch k; the messages of the jobs it took
  find them done.
- ``sweep(stage)``: return expired leases to the queue and resend messages of queued jobs
  untouched for ``celery.resend_after_s`` (lost with a broker that restarted empty, say).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from sqlalchemy import or_, select, update

from common import jobs as jobstore
from common.db import Database, get_database
from common.models import Job, utcnow

log = logging.getLogger(__name__)


def send_jobs(ids: list[int], db: Database) -> int:
    """Send the message of each queued job among ``ids``; returns how many were sent."""
    from common import stages
    from common.celery_app import get_app

    if not ids:
        return 0
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.stage, Job.not_before).where(Job.id.in_(ids), Job.status == "queued")
        ).all()
    app = get_app()
    sent = 0
    now = utcnow()
    for job_id, stage, not_before in rows:
        options: dict[str, Any] = {"queue": stage, "routing_key": stage, "exchange": "synthpipe"}
        if not_before is not None:
            delay = (jobstore.as_utc(not_before) - now).total_seconds()
            if delay > 0:
                options["countdown"] = delay
        try:
            app.send_task(stages.get(stage).task_name, args=[job_id], **options)
            sent += 1
        except Exception as exc:  # broker down: the job stays queued; the sweeper resends it
            log.warning("could not send job %s to queue %s: %s", job_id, stage, exc)
    return sent


def install_dispatcher(db: Database) -> None:
    """Make every commit that queues jobs send their messages."""

    def dispatch(ids: list[int]) -> None:
        send_jobs(ids, db)

    db.dispatcher = dispatch


def sweep(db: Database, stage: str, resend_after_s: float) -> dict[str, int]:
    """Requeue expired leases (their messages are resent) and resend stale queued jobs."""
    requeued = jobstore.requeue_expired(db, stage)
    now = utcnow()
    cutoff_dt = now - dt.timedelta(seconds=resend_after_s)
    with db.session() as s:
        stale = s.execute(
            update(Job)
            .where(Job.stage == stage, Job.status == "queued", Job.updated_at < cutoff_dt,
                   or_(Job.not_before.is_(None), Job.not_before <= now))
            .values(updated_at=now)
            .returning(Job.id),
            execution_options={"synchronize_session": False},
        ).scalars().all()
    resent = send_jobs(list(stale), db) if stale else 0
    if requeued or resent:
        log.info("sweep %s: %d leases expired, %d messages resent", stage, len(requeued), resent)
    return {"requeued": len(requeued), "resent": resent}


class Sweeper:
    """Sweeps one stage every ``interval`` seconds in a daemon thread of the worker."""

    def __init__(self, stage: str, interval: float, resend_after_s: float) -> None:
        self.stage, self.interval, self.resend_after_s = stage, interval, resend_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sweep-{stage}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                sweep(worker_context().db, self.stage, self.resend_after_s)
            except Exception as exc:  # database or broker away: try again next round
                log.warning("sweep %s failed: %s", self.stage, exc)


_CONTEXT: dict[str, Any] = {}


def worker_context():  # -> StageContext
    """The worker process's stage context (made after any fork, in the process that uses it)."""
    ctx = _CONTEXT.get("ctx")
    if ctx is None:
        from common.runner import StageContext
        from common.settings import get_settings
        from common.storage import get_storage

        settings = get_settings()
        db = get_database(settings.database_url, settings=settings)
        install_dispatcher(db)
        ctx = _CONTEXT["ctx"] = StageContext(settings=settings, db=db, storage=get_storage(settings.storage_url))
    return ctx


def reset_worker_context() -> None:
    """Forget the context in a child after fork: it makes its own engines, and leaves the
    connections it inherited to the parent (whose sweeper may be using them)."""
    from common.db import reset_databases

    _CONTEXT.clear()
    reset_databases(close=False)


def run_job(stage: str, job_id: int) -> dict[str, Any]:
    """Run the job a message names, batched with up to B-1 more queued jobs of ``stage``."""
    from common import stages
    from common.runner import run_claimed

    ctx = worker_context()
    size = stages.get(stage).batch_size(ctx.settings)
    started = time.perf_counter()
    claimed = jobstore.claim(ctx.db, stage, size, worker=ctx.worker, ids=[job_id])
    if not claimed:
        log.info("%s job %s: nothing to claim (done, held elsewhere, or backing off)", stage, job_id)
        return {"job_id": job_id, "claimed": 0}
    phases = stages.get(stage).phases_object() if ctx.settings.jobs.overlap else None
    if phases is None:
        stats = run_claimed(stage, claimed, ctx)
        ids = [j.id for j in claimed]
    else:  # go on claiming: batch k+1 is prepared and k-1 recorded while the model runs k
        from common.overlap import OverlapStats, run_overlapped

        timing = OverlapStats()
        limit = ctx.settings.celery.soft_time_limit_s * ctx.settings.jobs.overlap_task_share
        stats = run_overlapped(stage, phases, ctx, batch_size=size, first=claimed, timing=timing,
                               max_jobs=size * ctx.settings.jobs.overlap_batches,
                               claim_until=time.monotonic() + limit)
        ids = timing.job_ids
    return {"job_id": job_id, "claimed": stats.claimed, "recorded": stats.by_status, "lost": stats.lost,
            "seconds": round(time.perf_counter() - started, 3), "jobs": ids}
