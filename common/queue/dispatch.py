"""Sending job messages: after a transaction commits, every job it queued gets its message
(delayed to the job's ``not_before`` when it is backing off). A send that fails is only logged:
the sweeper sends it again."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from common.core import stages
from common.queue.app import get_app
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import Job, utcnow

log = logging.getLogger(__name__)


def send_jobs(ids: list[int], db: Database) -> int:
    """Send the message of each queued job among ``ids``; returns how many were sent."""
    if not ids:
        return 0
    with db.session() as s:
        rows = s.execute(
            select(Job.id, Job.stage, Job.not_before, Job.payload).where(Job.id.in_(ids), jobstore.QUEUED)
        ).all()
    app = get_app()
    sent = 0
    now = utcnow()
    for job_id, stage, not_before, payload in rows:
        queue = queue_of(stage, payload)
        options: dict[str, Any] = {"queue": queue, "routing_key": queue, "exchange": "synthpipe"}
        if not_before is not None:
            delay = (jobstore.as_utc(not_before) - now).total_seconds()
            if delay > 0:
                options["countdown"] = delay
        try:
            app.send_task(stages.get(stage).task_name, args=[job_id], **options)
            sent += 1
        except Exception as exc:  # broker down: the job stays queued; the sweeper resends it
            log.warning("could not send job %s to queue %s: %s", job_id, queue, exc)
    return sent


def queue_of(stage_name: str, payload: dict[str, Any] | None) -> str:
    """The queue a job's message goes to: its lane's when its stage routes by lane and the
    payload names a known lane (an edit naming its backend), else the stage's own."""
    stage = stages.get(stage_name)
    lane = (payload or {}).get(stage.lane_field) if stage.lane_field else None
    return stage.lane_queue(lane) if lane in stage.lanes else stage.queue


def install_dispatcher(db: Database) -> None:
    """Make every commit that queues jobs send their messages."""

    def dispatch(ids: list[int]) -> None:
        send_jobs(ids, db)

    db.dispatcher = dispatch
