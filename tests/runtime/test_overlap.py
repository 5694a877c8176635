"""Overlapped batches: the next batch is prepared and the last recorded while the model runs,
with the same outcomes as batch after batch, at most three batches held, and failures per phase
ending where they would without the overlap."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from common.core import stages
from common.core.errors import ConfigError, InputError
from common.runtime.overlap import OverlapStats, Phases, run_overlapped
from common.runtime.runner import StageContext, run_stage
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome

EVENTS: list[tuple[str, str, int, float]] = []  # (phase, "start"|"end", first job id, time)
LOCK = threading.Lock()


def _mark(phase: str, edge: str, jobs: list[ClaimedJob]) -> None:
    with LOCK:
        EVENTS.append((phase, edge, jobs[0].id, time.perf_counter()))


def prepare(jobs: list[ClaimedJob], ctx: Any) -> list[ClaimedJob]:
    _mark("prepare", "start", jobs)
    if any(j.payload.get("do") == "prepare-crash" for j in jobs):
        raise RuntimeError("disk gone")
    time.sleep(0.15)
    _mark("prepare", "end", jobs)
    return jobs


def run(jobs: list[ClaimedJob], ctx: Any) -> list[ClaimedJob]:
    _mark("run", "start", jobs)
    if any(j.payload.get("do") == "misconfigured" for j in jobs):
        raise ConfigError("vl.device: no such card")
    time.sleep(0.15)
    _mark("run", "end", jobs)
    return jobs


def finish(jobs: list[ClaimedJob], ctx: Any) -> list[Outcome]:
    _mark("finish", "start", jobs)
    time.sleep(0.15)
    out = [Outcome.from_error(InputError("bad photo", code="toy.bad")) if j.payload.get("do") == "bad"
           else Outcome.ok({"n": j.payload["n"]}) for j in jobs]
    _mark("finish", "end", jobs)
    return out


PHASES = Phases(prepare, run, finish)
process_batch = PHASES.whole


@pytest.fixture
def ctx(db, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings, reset_settings
    from common.store.storage import get_storage

    stages.register(stages.Stage("toy", "test_overlap:process_batch", "toy.run", phases="test_overlap:PHASES"))
    monkeypatch.setenv("SYNTHPIPE_JOBS__BACKOFF_BASE_S", "0.05")
    reset_settings()
    EVENTS.clear()
    yield StageContext(settings=get_settings(), db=db, storage=get_storage())
    stages.unregister("toy")


def _enqueue(ctx: StageContext, plan: list[str]) -> None:
    with ctx.db.session() as s:
        for i, do in enumerate(plan):
            jobstore.enqueue(s, "toy", f"toy:{i}", {"do": do, "n": i}, max_attempts=2)


def _spans(phase: str) -> dict[int, tuple[float, float]]:
    starts = {j: t for p, e, j, t in EVENTS if p == phase and e == "start"}
    return {j: (starts[j], t) for p, e, j, t in EVENTS if p == phase and e == "end"}


def test_overlapped_run_records_what_the_serial_run_records_while_phases_overlap(ctx: StageContext) -> None:
    plan = ["ok", "ok", "bad", "ok", "ok", "ok", "ok", "bad", "ok", "ok", "ok", "ok"]
    _enqueue(ctx, plan)
    timing = OverlapStats()
    stats = run_overlapped("toy", PHASES, ctx, batch_size=2, timing=timing)
    assert stats.claimed == len(plan) and stats.by_status == {"succeeded": 10, "failed": 2}
    assert jobstore.counts(ctx.db)["toy"]["succeeded"] == 10
    rows = jobstore.list_jobs(ctx.db, stage="toy")
    assert sorted(r["reason"] for r in rows if r["status"] == "failed") == ["toy.bad", "toy.bad"]
    runs, preps, fins = _spans("run"), _spans("prepare"), _spans("finish")
    batches = sorted(runs)
    assert len(batches) == 6 and timing.batches == 6
    # batch k+1 was prepared while batch k ran, and batch k-1 finished while batch k ran
    overlapped_prepare = sum(preps[b][0] < runs[a][1] and preps[b][1] > runs[a][0]
                             for a, b in zip(batches, batches[1:], strict=False))
    overlapped_finish = sum(fins[a][0] < runs[b][1] and fins[a][1] > runs[b][0]
                            for a, b in zip(batches, batches[1:], strict=False))
    assert overlapped_prepare >= 3 and overlapped_finish >= 3, (overlapped_prepare, overlapped_finish)
    # never more than three batches between claim (prepare start) and record (finish end)
    for _, _, _, t in EVENTS:
        held = sum(preps[b][0] <= t < fins[b][1] for b in batches if b in fins)
        assert held <= 3
    assert 0 < timing.model_s <= timing.wall_s  # (the share itself is measured in benchmarks/bench_overlap.py)


def test_the_runner_overlaps_only_when_the_setting_is_on(ctx: StageContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import get_settings, reset_settings

    _enqueue(ctx, ["ok"] * 6)
    run_stage("toy", ctx, batch_size=2)
    assert not _overlaps()  # serial: each batch's phases end before the next batch's begin
    EVENTS.clear()
    monkeypatch.setenv("SYNTHPIPE_JOBS__OVERLAP", "true")
    reset_settings()
    on = StageContext(settings=get_settings(), db=ctx.db, storage=ctx.storage)
    with ctx.db.session() as s:
        for i in range(6, 12):
            jobstore.enqueue(s, "toy", f"toy:{i}", {"do": "ok", "n": i})
    stats = run_stage("toy", on, batch_size=2)
    assert stats.by_status == {"succeeded": 6}
    assert _overlaps()


def _overlaps() -> bool:
    runs, preps = _spans("run"), _spans("prepare")
    ids = sorted(runs)
    return any(preps[b][0] < runs[a][1] for a, b in zip(ids, ids[1:], strict=False))


def test_a_phase_that_breaks_fails_its_batch_alone_and_a_config_error_gives_jobs_back(ctx: StageContext) -> None:
    _enqueue(ctx, ["ok", "prepare-crash", "ok", "ok"])
    stats = run_overlapped("toy", PHASES, ctx, batch_size=2)
    # the crashed batch is retried (transient) and crashes again on its last attempt: dead
    by = jobstore.counts(ctx.db)["toy"]
    assert by["succeeded"] == 2 and by["queued"] + by["dead"] == 2, by
    assert stats.by_status.get("succeeded") == 2
    with ctx.db.session() as s:
        cfg = jobstore.enqueue(s, "toy", "toy:cfg", {"do": "misconfigured", "n": 9})
    time.sleep(0.1)  # past the crashed batch's backoff: it is claimable again
    with pytest.raises(ConfigError):
        run_overlapped("toy", PHASES, ctx, batch_size=1)
    row = next(r for r in jobstore.list_jobs(ctx.db, stage="toy") if r["id"] == cfg)
    assert row["status"] == "queued"  # the runner was misconfigured, not the job: given back
    assert jobstore.counts(ctx.db)["toy"]["running"] == 0  # nothing left held


def test_a_given_first_batch_runs_first_and_claiming_stops_at_the_limits(ctx: StageContext) -> None:
    """What a Celery task does: its named batch first, then more claims, up to ``max_jobs`` and
    not after ``claim_until``; a missing extra gives the batch back like a misconfiguration."""
    _enqueue(ctx, ["ok"] * 8)
    named = jobstore.claim(ctx.db, "toy", 2, worker="w", ids=[6])
    assert 6 in {j.id for j in named} and len(named) == 2
    timing = OverlapStats()
    stats = run_overlapped("toy", PHASES, ctx, batch_size=2, first=named, max_jobs=6, timing=timing)
    assert stats.claimed == 6 and timing.batches == 3
    assert timing.job_ids[:2] == [j.id for j in named]  # the given batch was prepared first
    assert jobstore.counts(ctx.db)["toy"]["queued"] == 2  # max_jobs counted the given batch
    past = OverlapStats()
    stats = run_overlapped("toy", PHASES, ctx, batch_size=2, claim_until=time.monotonic() - 1, timing=past)
    assert stats.claimed == 0 and past.job_ids == []  # past the deadline nothing new is claimed
    given = jobstore.claim(ctx.db, "toy", 2, worker="w")
    stats = run_overlapped("toy", PHASES, ctx, batch_size=2, first=given, claim_until=time.monotonic() - 1)
    assert stats.by_status == {"succeeded": 2}  # ... but what the task already holds is finished

    def needs_extra(jobs: list[ClaimedJob], ctx: Any) -> Any:
        raise ModuleNotFoundError("No module named 'diffusers'", name="diffusers")

    with ctx.db.session() as s:
        extra = jobstore.enqueue(s, "toy", "toy:extra", {"do": "ok", "n": 99})
    with pytest.raises(ConfigError, match="extra"):
        run_overlapped("toy", Phases(prepare, needs_extra, finish), ctx, batch_size=2)
    row = next(r for r in jobstore.list_jobs(ctx.db, stage="toy") if r["id"] == extra)
    assert row["status"] == "queued" and jobstore.counts(ctx.db)["toy"]["running"] == 0
