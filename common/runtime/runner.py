"""Running stages: claim → run → record, the same in local mode and in Celery workers.

A stage registers (``common.core.stages``) one batch function, ``process_batch(jobs, ctx) ->
list[Outcome]`` (one outcome per job, same order). This module owns everything around it: claiming, lease
heartbeats, turning a crash of the whole batch into per-job outcomes, and recording
(:func:`common.runtime.context.record_batch`, shared with the overlapped path).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from common.core import stages
from common.core.progress import bar
from common.core.settings import Settings
from common.runtime.context import (
    BatchFn,
    Heartbeat,
    RunStats,
    StageContext,
    check_outcomes,
    record_batch,
    runner_fault,
    whole_batch_failed,
)
from common.runtime.overlap import run_overlapped
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.jobs import ClaimedJob
from common.store.rows import utcnow

log = logging.getLogger(__name__)

def stage_function(stage: str) -> BatchFn:
    return stages.get(stage).batch_function()  # type: ignore[no-any-return]


def batch_size_for(stage: str, settings: Settings) -> int:
    return stages.get(stage).batch_size(settings)


def run_claimed(stage: str, claimed: Sequence[ClaimedJob], ctx: StageContext) -> RunStats:
    """Run one claimed batch through its stage function and record every job's outcome."""
    if not claimed:
        return RunStats()
    fn = stage_function(stage)
    started = time.perf_counter()
    with Heartbeat(ctx.db, list(claimed), ctx.settings.jobs.lease_s):
        try:
            outcomes = fn(list(claimed), ctx)
            check_outcomes(stage, outcomes, claimed)
        except Exception as exc:
            fault = runner_fault(exc)
            if fault is not None:  # the runner is misconfigured or lacks an extra, not the jobs: give them back
                released = jobstore.release(ctx.db, claimed, fault)
                log.debug("%s: %s; %d job(s) back in the queue", stage, fault, len(released))  # the caller reports it
                if fault is exc:
                    raise
                raise fault from exc
            if isinstance(exc, ModuleNotFoundError):
                raise
            outcomes = whole_batch_failed(stage, claimed, exc)
    return record_batch(stage, claimed, outcomes, ctx, started)


def run_stage(
    stage: str,
    ctx: StageContext,
    *,
    batch_size: int | None = None,
    max_jobs: int | None = None,
    wait_for_backoff: bool = True,
) -> RunStats:
    """Process ``stage`` until nothing of it is queued (local mode)."""
    size = batch_size or batch_size_for(stage, ctx.settings)
    total = RunStats()
    phases = stages.get(stage).phases_object() if ctx.settings.jobs.overlap else None
    if phases is not None:  # claim and prepare batch k+1 and record k-1 while the model runs k
        while max_jobs is None or total.claimed < max_jobs:
            total.merge(run_overlapped(stage, phases, ctx, batch_size=size,
                                       max_jobs=None if max_jobs is None else max_jobs - total.claimed))
            if not (wait_for_backoff and _wait_for_backoff(ctx.db, stage)):
                break
        return total
    with bar(desc=stage, total=jobstore.pending(ctx.db, stage)) as pbar:
        while max_jobs is None or total.claimed < max_jobs:
            jobstore.requeue_expired(ctx.db, stage)
            n = size if max_jobs is None else min(size, max_jobs - total.claimed)
            claimed = jobstore.claim(ctx.db, stage, n, worker=ctx.worker,
                                     lanes=stages.get(stage).served_lanes(ctx.settings))
            if not claimed:
                if wait_for_backoff and _wait_for_backoff(ctx.db, stage):
                    continue
                break
            stats = run_claimed(stage, claimed, ctx)
            total.merge(stats)
            pbar.total = total.claimed + jobstore.pending(ctx.db, stage)
            pbar.update(len(claimed))
            log.info("%s: batch of %d → %s", stage, len(claimed), stats.by_status)
    return total


def run_all(ctx: StageContext, chosen: Sequence[str] | None = None) -> dict[str, RunStats]:
    """Process every stage (or ``chosen``) in pipeline order until none has anything queued."""
    order = tuple(chosen) if chosen is not None else stages.names()
    out = {stage: RunStats() for stage in order}
    while True:
        progressed = False
        for stage in order:
            stats = run_stage(stage, ctx)
            out[stage].merge(stats)
            progressed |= stats.claimed > 0
        if not progressed:
            return out


def _wait_for_backoff(db: Database, stage: str) -> bool:
    """Sleep until the earliest backed-off job of ``stage`` may run; False if none waits."""
    when = jobstore.next_not_before(db, stage)
    if when is None:
        return False
    delay = (when - utcnow()).total_seconds()
    if delay > 0:
        log.info("%s: waiting %.1f s for a job in backoff", stage, delay)
        time.sleep(delay + 0.05)
    return True


__all__ = ["BatchFn", "RunStats", "StageContext", "run_all", "run_claimed", "run_stage", "runner_fault"]
