"""Overlapped batches: while the model runs batch k, batch k+1 is claimed and prepared and batch
k-1 is finished and recorded, so the device waits as little as possible on CPU work.

A stage opts in by naming a :class:`Phases` object in its registry entry (``Stage.phases``):
``prepare(jobs, ctx)`` does the CPU work before the model (reading rows, loading and decoding
images, building prompts), ``run(prepared, ctx)`` is the model call, ``finish(ran, ctx)`` turns
its outputs into one :class:`~common.jobs.Outcome` per job (encoding images, storage writes).
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
from typing import TYPE_CHECKING, Any

from common import jobs as jobstore
from common import metrics
from common.errors import ConfigError
from common.jobs import ClaimedJob, Outcome

if TYPE_CHECKING:
    from common.runner import RunStats, StageContext

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


def grouped_phases(stage: str, *, prepare_one: Callable[[ClaimedJob, Any], Any], group_of: Callable[[Any], Hashable],
                   backend_for: Callable[[Any, Any], Any],
                   finish_group: Callable[[list[Any], list[Any], dict[str, Any], float, Any], list[Outcome]]) -> Phases:
    """The phases of a stage whose jobs are prepared one by one (a job that cannot be fails
    alone), grouped by ``group_of`` (backend, adapter), run one ``backend_for(key).run_batch``
    per group (each prepared job has an ``item``), and finished a group at a time."""

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
            for p, outcome in zip(group, finish_group(group, outputs, params, seconds, ctx), strict=True):
                batch.outcomes[p.job.id] = outcome
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
    from common.runner import RunStats, _Heartbeat, runner_fault

    total = RunStats()
    timing = timing if timing is not None else OverlapStats()
    ready: queue.Queue[Any] = queue.Queue(maxsize=1)  # prepared, waiting for the model
    ran: queue.Queue[Any] = queue.Queue(maxsize=1)  # run, waiting to be finished and recorded
    stop = threading.Event()
    in_flight = threading.Semaphore(3)  # one being prepared or waiting, one on the model, one recording
    errors: list[BaseException] = []
    lock = threading.Lock()

    def fail_whole(batch: _Batch, exc: Exception, phase: str) -> None:
        log.exception("%s batch of %d failed as a whole in %s", stage, len(batch.claimed), phase)
        batch.outcomes = [Outcome.from_error(exc) for _ in batch.claimed]

    def give_back(batch: _Batch, exc: ConfigError) -> None:
        released = jobstore.release(ctx.db, batch.claimed, exc)
        log.error("%s: %s; %d job(s) back in the queue", stage, exc, len(released))
        batch.heartbeat.__exit__(None, None, None)
        errors.append(exc)
        stop.set()

    def producer() -> None:
        claimed_so_far = 0
        given = list(first) if first else None
        try:
            while not stop.is_set() and (max_jobs is None or claimed_so_far < max_jobs):
                in_flight.acquire()
                if given is not None:
                    claimed, given = given, None
                elif stop.is_set() or (claim_until is not None and time.monotonic() >= claim_until):
                    claimed = []
                else:
                    jobstore.requeue_expired(ctx.db, stage)
                    n = batch_size if max_jobs is None else min(batch_size, max_jobs - claimed_so_far)
                    claimed = jobstore.claim(ctx.db, stage, n, worker=ctx.worker)
                if not claimed:
                    in_flight.release()
                    break
                claimed_so_far += len(claimed)
                timing.job_ids.extend(j.id for j in claimed)
                batch = _Batch(claimed, _Heartbeat(ctx.db, claimed, ctx.settings.jobs.lease_s).__enter__(),
                               time.perf_counter())
                try:
                    batch.state = phases.prepare(list(claimed), ctx)
                except Exception as exc:
                    fault = runner_fault(exc)
                    if fault is not None:
                        give_back(batch, fault)
                        in_flight.release()
                        return
                    fail_whole(batch, exc, "prepare")
                ready.put(batch)
        except BaseException as exc:  # the store broke: stop the pipeline, say why
            errors.append(exc)
            stop.set()
        finally:
            ready.put(_DONE)

    def recorder() -> None:
        while True:
            batch = ran.get()
            if batch is _DONE:
                return
            try:
                outcomes = batch.outcomes
                if outcomes is None:
                    try:
                        outcomes = phases.finish(batch.state, ctx)
                        if len(outcomes) != len(batch.claimed):
                            raise RuntimeError(f"{stage} returned {len(outcomes)} outcomes for "
                                               f"{len(batch.claimed)} jobs")
                    except Exception as exc:
                        fail_whole(batch, exc, "finish")
                        outcomes = batch.outcomes
                assert outcomes is not None
                stats = RunStats(claimed=len(batch.claimed))
                for job, outcome in zip(batch.claimed, outcomes, strict=True):
                    try:
                        stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, outcome), outcome))
                    except Exception as exc:  # e.g. the output writer broke: record that instead
                        log.exception("recording job %s failed", job.id)
                        broken = Outcome.from_error(exc)
                        stats.add(metrics.job_recorded(stage, jobstore.record(ctx.db, job, broken), broken))
                metrics.batch_done(stage, len(batch.claimed), outcomes, time.perf_counter() - batch.started)
                log.info("%s: batch of %d → %s (overlapped)", stage, len(batch.claimed), stats.by_status)
                with lock:
                    total.merge(stats)
                    timing.batches += 1
            except BaseException as exc:
                errors.append(exc)
                stop.set()
            finally:
                batch.heartbeat.__exit__(None, None, None)
                in_flight.release()

    started = time.perf_counter()
    threads = [threading.Thread(target=producer, name=f"{stage}-prepare", daemon=True),
               threading.Thread(target=recorder, name=f"{stage}-record", daemon=True)]
    for t in threads:
        t.start()
    current: _Batch | None = None  # the batch on the model, until handed to the recorder
    try:
        while True:  # the model thread: this one, where the backend was loaded
            batch = ready.get()
            if batch is _DONE:
                break
            if stop.is_set() and errors and isinstance(errors[0], ConfigError):
                jobstore.release(ctx.db, batch.claimed, errors[0])  # misconfigured: not run, back in the queue
                batch.heartbeat.__exit__(None, None, None)
                in_flight.release()
                continue
            current = batch
            if batch.outcomes is None:
                t0 = time.perf_counter()
                try:
                    batch.state = phases.run(batch.state, ctx)
                except Exception as exc:
                    fault = runner_fault(exc)
                    if fault is not None:
                        current = None
                        give_back(batch, fault)
                        in_flight.release()
                        continue
                    fail_whole(batch, exc, "run")
                timing.model_s += time.perf_counter() - t0
            ran.put(batch)
            current = None
    except BaseException:  # interrupted on the model: let the producer stop, hand nothing more over
        stop.set()
        if current is not None:  # its heartbeat stops: the leases expire and the jobs come back
            current.heartbeat.__exit__(None, None, None)
            in_flight.release()
        while (left := ready.get()) is not _DONE:
            left.heartbeat.__exit__(None, None, None)  # its leases expire and the jobs come back
            in_flight.release()
        raise
    finally:
        ran.put(_DONE)
        for t in threads:
            t.join()
        timing.wall_s += time.perf_counter() - started
    if errors:
        raise errors[0]
    return total
