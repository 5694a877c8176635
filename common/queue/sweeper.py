"""Sweeping: return expired leases to the queue and resend messages of queued jobs untouched
for ``celery.resend_after_s`` (lost with a broker that restarted empty, say). Recovery never
waits on the broker's visibility timeout."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import or_, update

from common.queue.consumer import worker_context
from common.queue.dispatch import send_jobs
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import Job, utcnow

log = logging.getLogger(__name__)


def sweep(db: Database, stage: str, resend_after_s: float) -> dict[str, int]:
    """Requeue expired leases (their messages are resent) and resend stale queued jobs."""
    requeued = jobstore.requeue_expired(db, stage)
    now = utcnow()
    cutoff_dt = now - dt.timedelta(seconds=resend_after_s)
    with db.session() as s:
        stale = s.execute(
            update(Job)
            .where(Job.stage == stage, jobstore.QUEUED, Job.updated_at < cutoff_dt,
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
