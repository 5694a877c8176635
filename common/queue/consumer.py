"""The receiving side of distributed mode: the worker process's context and ``run_job``.

``run_job(stage, job_id)`` is what every Celery task does: claim the named job plus up to B-1
more of the stage, run them as one batch through the same stage function as local mode, record.
A message whose job is already done or held elsewhere claims nothing new: a no-op. With
``jobs.overlap`` a stage with phases goes on claiming (up to ``jobs.overlap_batches`` batches,
for at most ``jobs.overlap_task_share`` of the soft time limit) so that batch k+1 is prepared
and k-1 recorded while the model runs batch k; the messages of the jobs it took find them done.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from common.core import stages
from common.core.settings import get_settings
from common.queue.dispatch import install_dispatcher
from common.runtime.context import StageContext
from common.runtime.overlap import OverlapStats, run_overlapped
from common.runtime.runner import run_claimed
from common.store import jobs as jobstore
from common.store.db import get_database, reset_databases
from common.store.storage import get_storage

log = logging.getLogger(__name__)

_CONTEXT: dict[str, Any] = {}


def worker_context() -> StageContext:
    """The worker process's stage context (made after any fork, in the process that uses it)."""
    ctx = _CONTEXT.get("ctx")
    if ctx is None:
        settings = get_settings()
        db = get_database(settings.database_url, settings=settings)
        install_dispatcher(db)
        ctx = _CONTEXT["ctx"] = StageContext(settings=settings, db=db, storage=get_storage(settings.storage_url))
    return ctx


def reset_worker_context() -> None:
    """Forget the context in a child after fork: it makes its own engines, and leaves the
    connections it inherited to the parent (whose sweeper may be using them)."""
    _CONTEXT.clear()
    reset_databases(close=False)


def run_job(stage: str, job_id: int) -> dict[str, Any]:
    """Run the job a message names, batched with up to B-1 more queued jobs of ``stage``."""
    ctx = worker_context()
    size = stages.get(stage).batch_size(ctx.settings)
    started = time.perf_counter()
    claimed = jobstore.claim(ctx.db, stage, size, worker=ctx.worker, ids=[job_id],
                             lanes=stages.get(stage).served_lanes(ctx.settings))
    if not claimed:
        log.info("%s job %s: nothing to claim (done, held elsewhere, or backing off)", stage, job_id)
        return {"job_id": job_id, "claimed": 0}
    phases = stages.get(stage).phases_object() if ctx.settings.jobs.overlap else None
    if phases is None:
        stats = run_claimed(stage, claimed, ctx)
        ids = [j.id for j in claimed]
    else:  # go on claiming: batch k+1 is prepared and k-1 recorded while the model runs k
        timing = OverlapStats()
        limit = ctx.settings.celery.soft_time_limit_s * ctx.settings.jobs.overlap_task_share
        stats = run_overlapped(stage, phases, ctx, batch_size=size, first=claimed, timing=timing,
                               max_jobs=size * ctx.settings.jobs.overlap_batches,
                               claim_until=time.monotonic() + limit)
        ids = timing.job_ids
    return {"job_id": job_id, "claimed": stats.claimed, "recorded": stats.by_status, "lost": stats.lost,
            "seconds": round(time.perf_counter() - started, 3), "jobs": ids}
