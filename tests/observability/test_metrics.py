"""Prometheus metrics scraped over HTTP agree with the store: the store-side gauges of
`synthpipe metrics` (jobs, reasons, assets, broker queue lengths) and a real prefork worker's
counters, summed over its children; and `status --watch` leaves a readable screen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.net import free_port, wait_for
from fixtures.redis import RedisServer
from sqlalchemy import func, select

from common.store.rows import Job

# the same stage in this process and in the worker's: its behaviour is chosen per job by payload
PLUGIN = '''
import time
from common.core import stages
from common.core.errors import InputError, TransientError
from common.store.jobs import Outcome

CRAWL = {"site": "shop-a", "pages_visited": 3, "pages_failed": 1,
         "images_by_status": {"registered": 2, "rejected: image.too_small": 1}}


def process_batch(jobs, ctx):
    out = []
    for job in jobs:
        time.sleep(job.payload.get("sleep", 0))
        do = job.payload["do"]
        if do == "ok":
            out.append(Outcome.ok({"batch_seconds": 0.02}))
        elif do == "crawl":
            out.append(Outcome.ok(dict(CRAWL)))
        elif do == "skip":
            out.append(Outcome.skip("toy.boring", "nothing to do"))
        elif do == "bad":
            out.append(Outcome.from_error(InputError("a PDF, not a photo", code="toy.bad")))
        else:
            out.append(Outcome.from_error(TransientError("connection reset", code="toy.flaky")))
    return out


stages.register(stages.Stage("toy", "toyplug:process_batch", "toy.run", order=5))
'''
PLAN = ["ok"] * 4 + ["crawl", "skip", "bad", "bad", "flaky"]


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from common.core import stages
    from common.core.settings import reset_settings

    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "toyplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("SYNTHPIPE_PLUGINS", "toyplug")
    monkeypatch.setenv("SYNTHPIPE_JOBS__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SYNTHPIPE_JOBS__BACKOFF_BASE_S", "0.1")
    reset_settings()
    sys.modules.pop("toyplug", None)
    stages.load_plugins(["toyplug"])
    yield folder
    stages.unregister("toy")
    sys.modules.pop("toyplug", None)


def _enqueue(db, sleep: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    from common.store import jobs as jobstore

    with db.session() as s:
        for i, do in enumerate(PLAN):
            jobstore.enqueue(s, "toy", f"toy:{i}", {"do": do, "sleep": sleep}, max_attempts=2)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an endpoint: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _select(samples: dict, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:  # type: ignore[type-arg]
    return {lab: v for (n, lab), v in samples.items()
            if n == name and all(dict(lab).get(k) == want for k, want in labels.items())}


def _store_by_reason(engine_or_db) -> Counter[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with engine_or_db.connect() as c:
        rows = c.execute(select(Job.status, Job.reason, func.count()).where(Job.stage == "toy")
                         .group_by(Job.status, Job.reason))
        return Counter({(status, reason or "none"): n for status, reason, n in rows})


def test_store_gauges_over_http_equal_the_store_after_a_local_run(toy_plugin: Path, db) -> None:  # type: ignore[no-untyped-def]
    from common.core.settings import get_settings
    from common.observability.collector import serve_store
    from common.runtime.runner import StageContext, run_stage
    from common.store import jobs as jobstore
    from common.store.rows import Asset
    from common.store.storage import get_storage

    _enqueue(db)
    with db.session() as s:
        for i, (role, site) in enumerate([("person", "shop-a"), ("garment", "shop-a"), ("garment", None)]):
            s.add(Asset(sha256=f"{i:064x}", phash="0" * 16, size_bytes=1, format="PNG", width=64, height=64,
                        role=role, uri=f"file:///x/{i}", site=site))
    settings = get_settings()
    ctx = StageContext(settings=settings, db=db, storage=get_storage())
    stats = run_stage("toy", ctx)
    assert stats.claimed == len(PLAN) + 1  # the flaky job ran twice, then ended dead
    server = serve_store(db, settings, 0, "127.0.0.1")
    try:
        samples = _scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
    counts = jobstore.counts(db)
    for stage, by in counts.items():
        for status, n in by.items():
            assert samples[("synthpipe_jobs", (("stage", stage), ("status", status)))] == n, (stage, status)
    assert counts["toy"]["succeeded"] == 5 and counts["toy"]["failed"] == 2 and counts["toy"]["dead"] == 1
    by_reason = {(dict(lab)["status"], dict(lab)["reason"]): v
                 for lab, v in _select(samples, "synthpipe_jobs_by_reason", stage="toy").items()}
    with db.engine.connect() as c:
        rows = c.execute(select(Job.status, Job.reason, func.count()).where(Job.stage == "toy", Job.reason.is_not(None))
                         .group_by(Job.status, Job.reason))
        assert by_reason == {(status, reason): n for status, reason, n in rows}
    assert by_reason[("failed", "toy.bad")] == 2 and by_reason[("skipped", "toy.boring")] == 1
    assets = {tuple(dict(lab)[k] for k in ("role", "site")): v for lab, v in _select(samples, "synthpipe_assets").items()}
    assert assets == {("person", "shop-a"): 1, ("garment", "shop-a"): 1, ("garment", "none"): 1}
    assert samples[("synthpipe_store_up", ())] == 1
    assert not _select(samples, "synthpipe_queue_length")  # local mode: no broker, no queue gauges


@pytest.mark.postgres
@pytest.mark.redis
def test_prefork_worker_metrics_add_up_across_children_and_match_the_store(
        pg_url: str, toy_plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    from common.core.settings import reset_settings
    from common.queue.dispatch import install_dispatcher
    from common.store.db import Database, get_database

    redis = RedisServer(tmp_path)
    redis.start()
    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", pg_url)
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", redis.url)
    monkeypatch.setenv("SYNTHPIPE_CELERY__SWEEP_INTERVAL_S", "1")
    monkeypatch.setenv("SYNTHPIPE_METRICS__MULTIPROC_DIR", str(tmp_path / "multiproc"))
    (tmp_path / "multiproc").mkdir()
    reset_settings()
    Database(pg_url).upgrade()
    db = get_database(pg_url)
    install_dispatcher(db)
    _enqueue(db, sleep=0.4)  # each job's message goes to the broker on commit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_plugin), str(Path(__file__).parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    engine = create_engine(pg_url)
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "common.cli", *args], env=env, start_new_session=True,
                             stdout=open(tmp_path / log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        procs.append(p)
        return p

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))

    store_port, worker_port = free_port(), free_port()
    try:
        start("metrics", "--port", str(store_port), log="metrics.log")
        wait_for(lambda: _up(store_port), 60, "synthpipe metrics to answer")
        before = _scrape(store_port)
        assert before[("synthpipe_queue_length", (("queue", "toy"),))] == len(PLAN), logs()
        assert before[("synthpipe_jobs", (("stage", "toy"), ("status", "queued")))] == len(PLAN)
        assert before[("synthpipe_broker_up", ())] == 1

        worker = start("worker", "toy", "--concurrency", "2", "--pool", "prefork",
                       "--metrics-port", str(worker_port), log="worker.log")
        final = ("succeeded", "skipped", "failed", "dead")
        try:
            wait_for(lambda: sum(n for (st, _), n in _store_by_reason(engine).items() if st in final) == len(PLAN),
                  90, "every toy job to finish")
        except AssertionError:
            raise AssertionError(logs()) from None
        samples = _scrape(worker_port)
        finished = {(dict(lab)["status"], dict(lab)["reason"]): v
                    for lab, v in _select(samples, "synthpipe_jobs_finished_total", stage="toy").items()}
        store = _store_by_reason(engine)
        assert {k: v for k, v in finished.items() if k[0] in final} == store, (finished, store)
        assert finished[("queued", "toy.flaky")] == 1  # the first attempt backed off
        with engine.connect() as c:
            attempts = c.execute(select(func.sum(Job.attempts)).where(Job.stage == "toy")).scalar()
            pids = {w.rsplit(":", 1)[1] for (w,) in c.execute(select(Job.worker).where(Job.stage == "toy")) if w}
        assert len(pids) == 2 and str(worker.pid) not in pids, f"both children should have run jobs: {pids}"
        assert samples[("synthpipe_batch_size_count", (("stage", "toy"),))] == attempts
        assert samples[("synthpipe_batch_seconds_count", (("stage", "toy"),))] == attempts
        assert samples[("synthpipe_batch_seconds_sum", (("stage", "toy"),))] >= 0.4 * attempts
        assert samples[("synthpipe_model_call_seconds_count", (("stage", "toy"),))] == PLAN.count("ok")
        assert samples[("synthpipe_crawl_pages_total", (("outcome", "visited"), ("site", "shop-a")))] == 3
        assert samples[("synthpipe_crawl_images_total", (("site", "shop-a"), ("status", "rejected")))] == 1
        assert samples[("synthpipe_worker_processes", (("stage", "toy"),))] == 2

        after = _scrape(store_port)
        assert after[("synthpipe_queue_length", (("queue", "toy"),))] == 0
        for status in final:
            assert after[("synthpipe_jobs", (("stage", "toy"), ("status", status)))] == sum(
                n for (st, _), n in store.items() if st == status)

        # a child killed outright: the pool replaces it; the dead one leaves the live gauge, its counts stay
        children = _children(worker.pid)
        assert len(children) == 2, children
        os.kill(children[0], signal.SIGKILL)
        wait_for(lambda: len(set(_children(worker.pid)) - set(children)) == 1 and len(_children(worker.pid)) == 2,
              60, "the pool to replace the killed child")
        (new,) = set(_children(worker.pid)) - set(children)
        wait_for(lambda: any((tmp_path / "multiproc").glob(f"*/gauge_livesum_{new}.db")), 60,
              "the new child to count itself")
        again = _scrape(worker_port)
        assert again[("synthpipe_worker_processes", (("stage", "toy"),))] == 2
        assert _select(again, "synthpipe_jobs_finished_total", stage="toy") == _select(
            samples, "synthpipe_jobs_finished_total", stage="toy")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        engine.dispose()
        redis.kill()


def _up(port: int) -> bool:
    try:
        _scrape(port)
        return True
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return sorted(out)


def test_watch_frames_show_counts_rates_and_time_left() -> None:
    from common.observability.watch import Snapshot, rate, render

    first = Snapshot(0.0, {"vl": {"queued": 10, "running": 0, "succeeded": 0}})
    mid = Snapshot(10.0, {"vl": {"queued": 6, "running": 2, "succeeded": 2}})
    now = Snapshot(20.0, {"vl": {"queued": 0, "running": 2, "succeeded": 7, "failed": 1}})
    assert rate(mid, now, "vl") == pytest.approx(30.0)  # done (not failed) jobs per minute
    assert rate(first, now, "vl") == pytest.approx(21.0)
    lines = render(first, mid, now, clock="12:00:00")
    row = next(line for line in lines if line.startswith("vl ")).split()
    assert row[1:7] == ["0", "2", "7", "0", "1", "0"]
    assert row[7:] == ["30.00", "21.00", "0m03s"]  # 2 jobs left, leaving the queue at 36 a minute
    meter = next(line for line in lines if "|" in line and line.startswith("vl "))
    assert "7/10 done, 1 failed" in meter and "70%" in meter


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_status_watch_stops_on_ctrl_c_leaving_the_last_frame(toy_plugin: Path, db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _enqueue(db)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_plugin), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "status", "--watch", "--interval", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        assert proc.stdout is not None
        while seen.count("synthpipe status at") < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        rest, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    frames = (seen + rest).strip().split("\n\n")
    assert len(frames) >= 2
    last = frames[-1].splitlines()
    assert last[0].startswith("synthpipe status at")
    toy = next((line for line in last if line.startswith("toy ")), f"no toy row in {last}")
    assert toy.split()[1] == str(len(PLAN)), last  # every toy job queued
    assert "Traceback" not in err


class _Cards:
    """Stands in for NVML's device list (the thing under test is which cards a pin leaves)."""

    def __init__(self, uuids: list[str]) -> None:
        self.uuids = uuids

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - NVML's names
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return self.uuids[handle]


@pytest.mark.parametrize(("pin", "cards"), [(None, [0, 1, 2]), ("1", [1]), ("2,0", [2, 0]), ("", []),
                                            ("GPU-bbb", [1]), ("0,x,2", [0]), ("7", [])])
def test_gpu_metrics_report_the_cards_a_pin_leaves(pin: str | None, cards: list[int],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from common.observability.gpu import _visible

    if pin is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", pin)
    assert _visible(_Cards(["GPU-aaa", "GPU-bbb", "GPU-ccc"])) == cards


def test_gpu_metrics_without_a_card_are_absent_not_an_error() -> None:
    from common.observability.gpu import GpuCollector

    collector = GpuCollector()
    try:
        import pynvml

        pynvml.nvmlInit()
        has_card = pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        has_card = False
    families = list(collector.collect())
    if has_card:
        assert {f.name for f in families} == {"synthpipe_gpu_memory_used_bytes", "synthpipe_gpu_memory_total_bytes",
                                              "synthpipe_gpu_utilization_ratio"}
    else:
        assert families == [] and collector.cards() == []
