"""Running stages: claim → run → record, the same in local mode and in Celery workers.

A stage registers (``common.stages``) one batch function, ``process_batch(jobs, ctx) ->
list[Outcome]`` (one outcome per job, same order). This module owns everything around it: claiming, lease
heartbeats, turning a crash of the whole batch into per-job outcomes, and recording.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common import jobs as jobstore
from common import metrics, stages
from common.db import Database
from common.errors import ConfigError
from common.jobs import ClaimedJob, Outcome
from common.models import utcnow
from common.progress import bar
from common.settings import Settings
from common.storage import Storage

log = logging.getLogger(__name__)

BatchFn = Callable[[list[ClaimedJob], "StageContext"], list[Outcome]]


@dataclass
class StageContext:
    """What a stage function gets besides its jobs."""

    settings: Settings
    db: Database
    storage: Storage
    worker: str = field(default_factory=jobstore.default_worker_id)

    def __post_init__(self) -> None:
        self.db.jobs = self.settings.jobs  # the job store works with this context's settings


@dataclass
class RunStats:
    claimed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # outcomes not recorded because the claim no longer held the job

    def add(self, status: str | None) -> None:
        if status is None:
            self.lost += 1
        else:
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def merge(self, other: RunStats) -> None:
        self.claimed += other.claimed
        self.lost += other.lost
        for k, v in other.by_status.items():
            self.by_status[k] = self.by_status.get(k, 0) + v


def stage_function(stage: str) -> BatchFn:
    return stages.get(stage).batch_function()  # type: ignore[no-any-return]


def batch_size_for(stage: str, settings: Settings) -> int:
    return stages.get(stage).batch_size(settings)


def runner_fault(exc: BaseException) -> ConfigError | None:
    """The settings error behind ``exc`` when the runner is at fault, not the jobs: a
    misconfiguration, or an extra that is not installed here. None otherwise."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, ModuleNotFoundError):
        from common.extras import missing_extra

        return missing_extra(exc)
    return None


def run_claimed(stage: str, claimed: Sequence[ClaimedJob], ctx: StageContext) -> RunStats:
    """Run one claimed batch through its stage function and record every job's outcome."""
    stats = RunStats(claimed=len(claimed))
    if not claimed:
        return stats
    fn = stage_function(stage)
    started = time.perf_counter()
    with _Heartbeat(ctx.db, list(claimed), ctx.settings.jobs.lease_s):
        try:
            outcomes = fn(list(claimed), ctx)
            if len(outcomes) != len(claimed):
                raise RuntimeError(f"{stage} returned {len(outcomes)} outcomes for {len(claimed)} jobs")
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
            # the batch as a whole broke: every job gets another attempt
            log.exception("%s batch of %d failed as a whole", stage, len(claimed))
            outcomes = [Outcome.from_error(exc) for _ in claimed]
    for job, outcome in zip(claimed, outcomes, strict=True):
        try:
            stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, outcome), outcome))
        except Exception as exc:  # e.g. the output writer broke: record that instead
            log.exception("recording job %s failed", job.id)
            broken = Outcome.from_error(exc)
            stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, broken), broken))
    metrics.batch_done(stage, len(claimed), outcomes, time.perf_counter() - started)
    return stats


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
        from common.overlap import run_overlapped

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
            claimed = jobstore.claim(ctx.db, stage, n, worker=ctx.worker)
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


class _Heartbeat:
    """Extends the claim's leases while a long batch runs, so only a dead runner loses them."""

    def __init__(self, db: Database, claimed: list[ClaimedJob], lease_s: float) -> None:
        self.db, self.claimed, self.lease_s = db, claimed, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                jobstore.extend_lease(self.db, self.claimed, self.lease_s)
            except Exception:  # a missed beat only shortens the lease
                log.warning("lease heartbeat failed", exc_info=True)
