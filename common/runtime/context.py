"""What every way of running a stage shares: the context a stage function gets, the counts a
run returns, the lease heartbeat, and the one path from a batch's outcomes to recorded jobs.

The serial runner (:mod:`common.runtime.runner`) and the overlapped one
(:mod:`common.runtime.overlap`) both end a batch in :func:`record_batch`, so "the outcomes
match the jobs, each is recorded, a broken writer is recorded as that, the batch is counted"
is written once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.core.errors import ConfigError
from common.core.extras import missing_extra
from common.core.settings import Settings
from common.domain.editplan import CandidateBudget
from common.observability import metrics
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.jobs import ClaimedJob, Outcome
from common.store.storage import Storage

log = logging.getLogger(__name__)

BatchFn = Callable[[list[ClaimedJob], "StageContext"], list[Outcome]]


@dataclass
class StageContext:
    """What a stage function gets besides its jobs."""

    settings: Settings
    db: Database
    storage: Storage
    worker: str = field(default_factory=jobstore.default_worker_id)
    #: the extra best-of-N candidates this process may still plan (``edit.candidates_max_per_run``):
    #: one context is one run (``synthpipe run``, or a worker process)
    candidate_budget: CandidateBudget | None = None

    def __post_init__(self) -> None:
        self.db.jobs = self.settings.jobs  # the job store works with this context's settings
        if self.candidate_budget is None:
            self.candidate_budget = CandidateBudget(self.settings.edit.candidates_max_per_run)


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


def runner_fault(exc: BaseException) -> ConfigError | None:
    """The settings error behind ``exc`` when the runner is at fault, not the jobs: a
    misconfiguration, or an extra that is not installed here. None otherwise."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, ModuleNotFoundError):
        return missing_extra(exc)
    return None


def check_outcomes(stage: str, outcomes: Sequence[Outcome], claimed: Sequence[ClaimedJob]) -> None:
    """A stage function owes one outcome per job, in order; anything else breaks the batch."""
    if len(outcomes) != len(claimed):
        raise RuntimeError(f"{stage} returned {len(outcomes)} outcomes for {len(claimed)} jobs")


def whole_batch_failed(stage: str, claimed: Sequence[ClaimedJob], exc: Exception, phase: str = "") -> list[Outcome]:
    """The batch as a whole broke: every job gets the error (and so another attempt)."""
    log.exception("%s batch of %d failed as a whole%s", stage, len(claimed), f" in {phase}" if phase else "")
    return [Outcome.from_error(exc) for _ in claimed]


def record_batch(stage: str, claimed: Sequence[ClaimedJob], outcomes: Sequence[Outcome], ctx: StageContext,
                 started: float) -> RunStats:
    """Record every job's outcome (fenced on its claim), count it, and report the batch."""
    stats = RunStats(claimed=len(claimed))
    for job, outcome in zip(claimed, outcomes, strict=True):
        try:
            stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, outcome), outcome))
        except Exception as exc:  # e.g. the output writer broke: record that instead
            log.exception("recording job %s failed", job.id)
            broken = Outcome.from_error(exc)
            stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, broken), broken))
    metrics.batch_done(stage, len(claimed), outcomes, time.perf_counter() - started)
    return stats


class Heartbeat:
    """Extends the claim's leases while a long batch runs, so only a dead runner loses them."""

    def __init__(self, db: Database, claimed: list[ClaimedJob], lease_s: float) -> None:
        self.db, self.claimed, self.lease_s = db, claimed, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                jobstore.extend_lease(self.db, self.claimed, self.lease_s)
            except Exception:  # a missed beat only shortens the lease
                log.warning("lease heartbeat failed", exc_info=True)
