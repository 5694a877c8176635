"""Overlapped batches: while the model runs batch k, batch k+1 is claimed and prepared and batch
k-1 is finished and recorded, so the device waits as little as possible on CPU work.

A stage opts in by naming a :class:`Phases` object in its registry entry (``Stage.phases``):
``prepare(jobs, ctx)`` does the CPU work before the model (reading rows, loading and decoding
images, building prompts), ``run(prepared, ctx)`` is the model call, ``finish(ran, ctx)`` turns
its outputs into one :class:`~common.store.jobs.Outcome` per job (encoding images, storage writes).
The same stage's ``process_batch`` is ``finish(run(prepare(jobs)))``, so both paths give the
same outcomes. :func:`grouped_phases` builds the three from a stage's per-job parts for the
usual shape (jobs grouped by the model they need, one ``run_batch`` per group): the VL, edit
and generate stages use it. Three threads; at most three batches are held at once (one being prepared or
waiting for the model, one on the model, one being recorded), each under its own lease
heartbeat from claim to record. The model runs in the calling thread, where it was loaded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from common.core import stages
from common.core.errors import ConfigError
from common.runtime.context import (
    Heartbeat,
    RunStats,
    StageContext,
    check_outcomes,
    record_batch,
    runner_fault,
    whole_batch_failed,
)
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phases:
    """A stage's batch function cut where the model call begins and ends."""

    prepare: Callable[[list[ClaimedJob], Any], Any]
    run: Callable[[Any, Any], Any]
    finish: Callable[[Any, Any], list[Outcome]]

    def whole(self, jobs: list[ClaimedJob], ctx: Any) -> list[Outcome]:
        """The phases one after another: the stage's plain ``process_batch``."""
        return self.finish(self.run(self.prepare(jobs, ctx), ctx), ctx)


@dataclass
class GroupedBatch:
    """One batch between its phases: the jobs that could not be prepared (with their outcomes),
    the rest grouped by the model they need, then each group's outputs, the backend's recorded
    parameters and the seconds its ``run_batch`` took."""

    jobs: list[ClaimedJob]
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    groups: dict[Hashable, list[Any]] = field(default_factory=dict)
    outputs: dict[Hashable, tuple[list[Any], dict[str, Any], float]] = field(default_factory=dict)


@dataclass
class GroupRun:
    """One group's model call as its finisher sees it: the backend's recorded parameters, the
    seconds ``run_batch`` took, the group's size, and a dict the finisher may keep state in
    across the group's jobs (the generate stage's repeats inside a batch)."""

    params: dict[str, Any]
    seconds: float
    size: int
    state: dict[str, Any] = field(default_factory=dict)


def grouped_phases(stage: str, *, prepare_one: Callable[[ClaimedJob, Any], Any], group_of: Callable[[Any], Hashable],
                   backend_for: Callable[[Any, Any], Any],
                   finish_one: Callable[[Any, Any, GroupRun, Any], Outcome]) -> Phases:
    """The phases of a stage whose jobs are prepared one by one (a job that cannot be fails
    alone), grouped by ``group_of`` (backend, adapter), run one ``backend_for(key).run_batch``
    per group (each prepared job has an ``item`` and a ``job``), and finished job by job with
    ``finish_one(prepared, output, group_run, ctx)``. The VL, edit and generate stages are this
    shape; each writes only its three per-job parts."""

    def prepare(jobs: list[ClaimedJob], ctx: Any) -> GroupedBatch:
        batch = GroupedBatch(list(jobs))
        for job in jobs:
            try:
                p = prepare_one(job, ctx)
            except Exception as exc:  # this job alone: input errors fail it, anything else is retried
                log.warning("%s job %s could not be prepared: %s", stage, job.key, exc)
                batch.outcomes[job.id] = Outcome.from_error(exc)
            else:
                batch.groups.setdefault(group_of(p), []).append(p)
        return batch

    def run(batch: GroupedBatch, ctx: Any) -> GroupedBatch:
        for key, group in batch.groups.items():
            backend = backend_for(key, ctx)  # loaded (once, resident) here, in the model thread
            started = time.perf_counter()
            outputs = backend.run_batch([p.item for p in group])
            seconds = time.perf_counter() - started
            params = backend.params() if hasattr(backend, "params") else {}
            batch.outputs[key] = (outputs, params, seconds)
        return batch

    def finish(batch: GroupedBatch, ctx: Any) -> list[Outcome]:
        for key, group in batch.groups.items():
            outputs, params, seconds = batch.outputs[key]
            run = GroupRun(params, seconds, len(group))
            for p, out in zip(group, outputs, strict=True):
                batch.outcomes[p.job.id] = finish_one(p, out, run, ctx)
        return [batch.outcomes[j.id] for j in batch.jobs]

    return Phases(prepare, run, finish)


@dataclass
class _Batch:
    claimed: list[ClaimedJob]
    heartbeat: Any
    started: float
    state: Any = None
    outcomes: list[Outcome] | None = None  # set when a phase failed as a whole
    model_s: float = 0.0


@dataclass
class OverlapStats:
    """Where the time went: the model thread's busy seconds over the wall time."""

    wall_s: float = 0.0
    model_s: float = 0.0
    batches: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    job_ids: list[int] = field(default_factory=list)  # every job claimed, in claim order

    @property
    def model_busy_share(self) -> float:
        return self.model_s / self.wall_s if self.wall_s > 0 else 0.0


_DONE = object()


def run_overlapped(stage: str, phases: Phases, ctx: StageContext, *, batch_size: int,
                   max_jobs: int | None = None, timing: OverlapStats | None = None,
                   first: list[ClaimedJob] | None = None, claim_until: float | None = None) -> RunStats:
    """Process ``stage`` until nothing of it is claimable, three batches in flight at most.

    ``first``: a batch already claimed (a Celery task's named job and its companions), run
    before anything else is claimed; ``max_jobs`` counts it. ``claim_until``: a
    ``time.monotonic()`` after which no new batch is claimed (what is held is still finished).
    """
    run = _OverlappedRun(stage, phases, ctx, batch_size=batch_size, max_jobs=max_jobs,
                         timing=timing if timing is not None else OverlapStats(), first=first,
                         claim_until=claim_until)
    return run.run()


class _OverlappedRun:
    """One overlapped run: a producer thread (claim, prepare), the model loop in the calling
    thread, a recorder thread (finish, record); queues of one between them."""

    def __init__(self, stage: str, phases: Phases, ctx: StageContext, *, batch_size: int, max_jobs: int | None,
                 timing: OverlapStats, first: list[ClaimedJob] | None, claim_until: float | None) -> None:
        self.stage, self.phases, self.ctx = stage, phases, ctx
        self.batch_size, self.max_jobs, self.timing = batch_size, max_jobs, timing
        self.first, self.claim_until = first, claim_until
        self.total = RunStats()
        self.ready: queue.Queue[Any] = queue.Queue(maxsize=1)  # prepared, waiting for the model
        self.ran: queue.Queue[Any] = queue.Queue(maxsize=1)  # run, waiting to be finished and recorded
        self.stop = threading.Event()
        self.in_flight = threading.Semaphore(3)  # one being prepared or waiting, one on the model, one recording
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def _fail_whole(self, batch: _Batch, exc: Exception, phase: str) -> None:
        batch.outcomes = whole_batch_failed(self.stage, batch.claimed, exc, phase)

    def _give_back(self, batch: _Batch, exc: ConfigError) -> None:
        """The runner is at fault (settings, a missing extra): the batch goes back uncharged and
        the run stops, saying why."""
        released = jobstore.release(self.ctx.db, batch.claimed, exc)
        log.error("%s: %s; %d job(s) back in the queue", self.stage, exc, len(released))
        self.errors.append(exc)
        self.stop.set()
        self._drop(batch)

    def _drop(self, batch: _Batch) -> None:
        """Let go of a batch without recording it: its leases expire and its jobs come back."""
        batch.heartbeat.stop()
        self.in_flight.release()

    def _next_claim(self, claimed_so_far: int) -> list[ClaimedJob]:
        if self.first is not None:
            claimed, self.first = self.first, None
            return claimed
        if self.stop.is_set() or (self.claim_until is not None and time.monotonic() >= self.claim_until):
            return []
        jobstore.requeue_expired(self.ctx.db, self.stage)
        n = self.batch_size if self.max_jobs is None else min(self.batch_size, self.max_jobs - claimed_so_far)
        return jobstore.claim(self.ctx.db, self.stage, n, worker=self.ctx.worker,
                              lanes=stages.get(self.stage).served_lanes(self.ctx.settings))

    def producer(self) -> None:
        claimed_so_far = 0
        try:
            while not self.stop.is_set() and (self.max_jobs is None or claimed_so_far < self.max_jobs):
                self.in_flight.acquire()
                claimed = self._next_claim(claimed_so_far)
                if not claimed:
                    self.in_flight.release()
                    break
                claimed_so_far += len(claimed)
                self.timing.job_ids.extend(j.id for j in claimed)
                batch = _Batch(claimed, Heartbeat(self.ctx.db, claimed, self.ctx.settings.jobs.lease_s).__enter__(),
                               time.perf_counter())
                try:
                    batch.state = self.phases.prepare(list(claimed), self.ctx)
                except Exception as exc:
                    fault = runner_fault(exc)
                    if fault is not None:
                        self._give_back(batch, fault)
                        return
                    self._fail_whole(batch, exc, "prepare")
                self.ready.put(batch)
        except BaseException as exc:  # the store broke: stop the pipeline, say why
            self.errors.append(exc)
            self.stop.set()
        finally:
            self.ready.put(_DONE)

    def recorder(self) -> None:
        while True:
            batch = self.ran.get()
            if batch is _DONE:
                return
            try:
                outcomes = batch.outcomes
                if outcomes is None:
                    try:
                        outcomes = self.phases.finish(batch.state, self.ctx)
                        check_outcomes(self.stage, outcomes, batch.claimed)
                    except Exception as exc:
                        self._fail_whole(batch, exc, "finish")
                        outcomes = batch.outcomes
                assert outcomes is not None
                stats = record_batch(self.stage, batch.claimed, outcomes, self.ctx, batch.started)
                log.info("%s: batch of %d → %s (overlapped)", self.stage, len(batch.claimed), stats.by_status)
                with self.lock:
                    self.total.merge(stats)
                    self.timing.batches += 1
            except BaseException as exc:
                self.errors.append(exc)
                self.stop.set()
            finally:
                self._drop(batch)

    def _run_model(self, batch: _Batch) -> bool:
        """Run ``batch`` on the model; False when the runner is at fault and the batch went back."""
        t0 = time.perf_counter()
        try:
            batch.state = self.phases.run(batch.state, self.ctx)
        except Exception as exc:
            fault = runner_fault(exc)
            if fault is not None:
                self._give_back(batch, fault)
                return False
            self._fail_whole(batch, exc, "run")
        self.timing.model_s += time.perf_counter() - t0
        return True

    def run(self) -> RunStats:
        started = time.perf_counter()
        threads = [threading.Thread(target=self.producer, name=f"{self.stage}-prepare", daemon=True),
                   threading.Thread(target=self.recorder, name=f"{self.stage}-record", daemon=True)]
        for t in threads:
            t.start()
        current: _Batch | None = None  # the batch on the model, until handed to the recorder
        try:
            while True:  # the model thread: this one, where the backend was loaded
                batch = self.ready.get()
                if batch is _DONE:
                    break
                if self.stop.is_set() and self.errors and isinstance(self.errors[0], ConfigError):
                    jobstore.release(self.ctx.db, batch.claimed, self.errors[0])  # misconfigured: back in the queue
                    self._drop(batch)
                    continue
                current = batch
                if batch.outcomes is None and not self._run_model(batch):
                    current = None
                    continue
                self.ran.put(batch)
                current = None
        except BaseException:  # interrupted on the model: let the producer stop, hand nothing more over
            self.stop.set()
            if current is not None:  # its heartbeat stops: the leases expire and the jobs come back
                self._drop(current)
            while (left := self.ready.get()) is not _DONE:
                self._drop(left)
            raise
        finally:
            self.ran.put(_DONE)
            for t in threads:
                t.join()
            self.timing.wall_s += time.perf_counter() - started
        if self.errors:
            raise self.errors[0]
        return self.total
