"""The local runner: claim → run → record until idle, whatever the stage function does."""

from __future__ import annotations

import pytest

from common.core import stages
from common.core.errors import InputError, TransientError
from common.runtime.runner import RunStats, StageContext, run_stage
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome

CALLS: list[list[int]] = []


def flaky_stage(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    """A stand-in stage: behaviour chosen per job by its payload."""
    CALLS.append([j.id for j in jobs])
    out = []
    for j in jobs:
        kind = j.payload["kind"]
        if kind == "crash-batch":
            raise RuntimeError("CUDA error: device-side assert")
        if kind == "ok":
            out.append(Outcome.ok({"n": j.payload["n"]}))
        elif kind == "bad":
            out.append(Outcome.from_error(InputError(f"photo {j.payload['n']} is a PDF")))
        elif kind == "flaky" and j.attempts < 2:
            out.append(Outcome.from_error(TransientError("connection reset")))
        else:
            out.append(Outcome.ok({"n": j.payload["n"], "attempts": j.attempts}))
    return out


def short_stage(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    return [Outcome.ok()]  # wrong length on purpose


@pytest.fixture
def toy():  # type: ignore[no-untyped-def]
    """A toy stage defined through the registry alone; its function is chosen per test."""

    def use(function: str) -> None:
        stages.register(stages.Stage("toy", f"test_runner:{function}", "toy.run"))

    yield use
    stages.unregister("toy")


@pytest.fixture
def ctx(db, monkeypatch: pytest.MonkeyPatch) -> StageContext:  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings, reset_settings
    from common.store.storage import get_storage

    monkeypatch.setenv("SYNTHPIPE_JOBS__BACKOFF_BASE_S", "0.05")
    reset_settings()
    CALLS.clear()
    return StageContext(settings=get_settings(), db=db, storage=get_storage())


def _queue(ctx: StageContext, kinds: list[str], max_attempts: int = 3) -> None:
    with ctx.db.session() as s:
        for n, kind in enumerate(kinds):
            jobstore.enqueue(s, "toy", f"toy:{n}", {"kind": kind, "n": n}, max_attempts=max_attempts)


def test_runs_until_idle_in_batches(ctx: StageContext, toy) -> None:  # type: ignore[no-untyped-def]
    toy("flaky_stage")
    _queue(ctx, ["ok"] * 5 + ["bad", "flaky", "ok"])
    stats = run_stage("toy", ctx, batch_size=3)
    assert isinstance(stats, RunStats)
    assert stats.by_status == {"succeeded": 7, "failed": 1, "queued": 1}
    assert [len(c) for c in CALLS] == [3, 3, 2, 1]  # the flaky job ran again after its backoff
    counts = jobstore.counts(ctx.db)["toy"]
    assert counts["succeeded"] == 7 and counts["failed"] == 1 and counts["queued"] == 0


def test_a_crashing_batch_retries_then_dies_without_stopping_the_run(ctx: StageContext, toy) -> None:  # type: ignore[no-untyped-def]
    toy("flaky_stage")
    _queue(ctx, ["crash-batch", "ok", "ok"], max_attempts=2)
    run_stage("toy", ctx, batch_size=1)
    counts = jobstore.counts(ctx.db)["toy"]
    assert counts == {**counts, "dead": 1, "succeeded": 2, "queued": 0, "running": 0}
    from common.store.rows import Job

    with ctx.db.session() as s:
        dead = s.query(Job).filter_by(status="dead").one()
        assert dead.error_type == "transient" and dead.reason == "unexpected.RuntimeError"
        assert "device-side assert" in (dead.error_message or "")
        assert dead.attempts == 2


def test_wrong_number_of_outcomes_is_a_recorded_error(ctx: StageContext, toy) -> None:  # type: ignore[no-untyped-def]
    toy("short_stage")
    _queue(ctx, ["ok", "ok"], max_attempts=1)
    run_stage("toy", ctx, batch_size=2)
    assert jobstore.counts(ctx.db)["toy"]["dead"] == 2
