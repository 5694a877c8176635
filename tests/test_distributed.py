"""Distributed mode with real parts: a Redis of the test's own on 127.0.0.1, the real
PostgreSQL, real `synthpipe worker` subprocesses on tiny models, and faults injected into each."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from common.devkit import samples
from common.store.rows import Analysis, Edit, Job, JobEvent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, so it can be killed and restarted (empty)."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _can_connect(self.port), 10, "redis did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


class Cluster:
    """Environment + helpers for one distributed run."""

    def __init__(self, env: dict[str, str], pg_url: str, tmp: Path) -> None:
        self.env, self.pg_url, self.tmp = env, pg_url, tmp
        self.engine = create_engine(pg_url, pool_pre_ping=True)
        self.workers: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "common.cli", *args], env=self.env, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    def worker(self, stage: str, *extra: str, log: str | None = None) -> subprocess.Popen[bytes]:
        logfile = open(self.tmp / (log or f"worker-{stage}-{len(self.workers)}.log"), "wb")  # noqa: SIM115
        batch = ["--batch-size", "2"] if stage != "scrape" else []
        proc = subprocess.Popen([sys.executable, "-m", "common.cli", "worker", stage, *batch, *extra],
                                env=self.env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def counts(self, stage: str) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(select(Job.status, func.count()).where(Job.stage == stage).group_by(Job.status))
            return {status: n for status, n in rows}

    def scalar(self, stmt):  # type: ignore[no-untyped-def]
        with self.engine.connect() as c:
            return c.execute(stmt).scalar()

    def wait_done(self, stage: str, n: int, timeout: float = 150) -> dict[str, int]:
        def done() -> bool:
            c = self.counts(stage)
            return sum(c.get(s, 0) for s in ("succeeded", "skipped", "failed", "dead")) >= n
        try:
            _wait(done, timeout, f"{n} {stage} jobs to finish")
        except AssertionError:
            raise AssertionError(f"{self.counts(stage)}\n{self.logs()}") from None
        return self.counts(stage)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("worker-*.log")))

    def stop_all(self) -> None:
        """Warm shutdown first, so a worker's resident browser is closed and no Chromium outlives
        the test to load the machine for the next ones; SIGKILL whatever does not stop in time."""
        live = [p for p in self.workers if p.poll() is None]
        for p in live:
            os.killpg(p.pid, signal.SIGTERM)
        for p in live:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.engine.dispose()


@pytest.fixture
def cluster(pg_url: str, redis_server: RedisServer, tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[Cluster]:
    from common.devkit.tinymodels import tiny_run_settings
    from common.store.db import Database

    Database(pg_url).upgrade()
    env = {
        **os.environ,
        "SYNTHPIPE_DATA_DIR": str(tmp_path / "data"),
        "SYNTHPIPE_DATABASE_URL": pg_url,
        "SYNTHPIPE_STORAGE_URL": (tmp_path / "objects").as_uri(),
        "SYNTHPIPE_BROKER_URL": redis_server.url,
        "SYNTHPIPE_VL_MODEL": str(tiny_models["vl"]),
        "SYNTHPIPE_EDIT_MODEL": str(tiny_models["edit"]),
        # short enough that a killed worker's jobs come back soon, long enough that a heartbeat
        # (every lease/3) is never late on a loaded 2-core machine while a worker imports torch
        "SYNTHPIPE_JOBS__LEASE_S": "10",
        "SYNTHPIPE_JOBS__MAX_ATTEMPTS": "3",
        "SYNTHPIPE_JOBS__BACKOFF_BASE_S": "0.5",
        "SYNTHPIPE_CELERY__SWEEP_INTERVAL_S": "1",
        "SYNTHPIPE_CELERY__RESEND_AFTER_S": "3",
        "SYNTHPIPE_CELERY__SOFT_TIME_LIMIT_S": "120",
        "SYNTHPIPE_CELERY__TIME_LIMIT_S": "150",
        "SYNTHPIPE_CELERY__VISIBILITY_TIMEOUT_S": "600",
        **tiny_run_settings(),
        # one torch thread per process: several workers share the machine's cores, and each taking
        # all of them (the default) makes a multi-worker test about twice as slow on 2 cores
        "OMP_NUM_THREADS": "1",
    }
    c = Cluster(env, pg_url, tmp_path)
    yield c
    c.stop_all()


def _photos(c: Cluster, persons: int = 3, garments: int = 4) -> None:
    folders = samples.write_samples(c.tmp / "photos", persons=persons, garments=garments, seed=9)
    for role, folder in folders.items():
        c.cli("ingest", str(folder), "--role", role)


def _one_analysis_per_job(c: Cluster) -> None:
    per_job = c.scalar(text("SELECT max(n) FROM (SELECT count(*) AS n FROM analyses GROUP BY item_set_id) t"))
    assert per_job == 1
    assert c.scalar(select(func.count()).select_from(Analysis)) == c.counts("vl").get("succeeded", 0) + c.counts(
        "vl").get("skipped", 0)


def test_stages_chain_and_sigkill_mid_batch_finishes_exactly_once(cluster: Cluster) -> None:
    _photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "1")  # sends 6 vl messages
    doomed = cluster.worker("vl", "--overlap")  # killed holding up to three batches
    _wait(lambda: cluster.counts("vl").get("running", 0) > 0, 90, "a vl job to start")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    held = cluster.counts("vl").get("running", 0)
    assert held > 0, "the worker was killed holding no job"
    cluster.worker("vl", "--overlap")
    cluster.worker("edit", "--overlap")
    vl = cluster.wait_done("vl", 6)
    assert vl.get("succeeded", 0) + vl.get("skipped", 0) == 6, vl
    _one_analysis_per_job(cluster)
    assert cluster.scalar(select(func.max(Job.attempts)).where(Job.stage == "vl")) == 2  # the killed batch
    n_edits = vl.get("succeeded", 0)
    cluster.wait_done("edit", n_edits)
    assert cluster.scalar(select(func.count()).select_from(Edit)) == n_edits
    assert cluster.counts("edit").get("succeeded") == n_edits
    for stage, recovering in (("vl", 1), ("edit", 2)):  # the recovering workers ran their batches overlapped
        log = (cluster.tmp / f"worker-{stage}-{recovering}.log").read_text()  # whole: resent no-ops fill the tail
        assert re.search(stage + r": batch of \d+ → .*\(overlapped\)", log), log[-3000:]


def test_sigterm_is_a_warm_shutdown_and_duplicates_are_harmless(cluster: Cluster) -> None:
    from common.core import stages

    _photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "2")
    w = cluster.worker("vl")
    _wait(lambda: cluster.counts("vl").get("running", 0) > 0, 90, "a vl job to start")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=120) is not None
    after = cluster.counts("vl")
    assert after.get("running", 0) == 0, f"warm shutdown left jobs running: {after}"
    assert after.get("succeeded", 0) + after.get("skipped", 0) >= 1, "the batch in hand was not finished"
    cluster.worker("vl")
    cluster.wait_done("vl", 6)
    objects_before = sorted(p.name for p in (cluster.tmp / "objects").rglob("*") if p.is_file())
    rows_before = cluster.scalar(select(func.count()).select_from(Analysis))
    # the same message delivered twice more, for a finished job
    job_id = cluster.scalar(select(func.min(Job.id)).where(Job.stage == "vl"))
    env = dict(cluster.env)
    code = ("import sys; from common.queue.app import get_app; app = get_app(); "
            f"[app.send_task({stages.get('vl').task_name!r}, args=[{job_id}], queue='vl', routing_key='vl') for _ in range(2)]")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    time.sleep(3)
    assert cluster.scalar(select(func.count()).select_from(Analysis)) == rows_before
    assert sorted(p.name for p in (cluster.tmp / "objects").rglob("*") if p.is_file()) == objects_before
    _one_analysis_per_job(cluster)


def test_prefork_pool_children_load_their_own_model_and_finish_each_job_once(cluster: Cluster) -> None:
    """`--concurrency 2` (prefork): children fork from a parent that holds no model and no
    database connection of theirs; each job runs once and is recorded by a child."""
    _photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "5", "--seed", "5")
    parent = cluster.worker("vl", "--concurrency", "2")
    counts = cluster.wait_done("vl", 5)
    assert counts.get("succeeded", 0) + counts.get("skipped", 0) == 5, counts
    _one_analysis_per_job(cluster)
    with cluster.engine.connect() as c:
        workers = {w for (w,) in c.execute(select(Job.worker).where(Job.stage == "vl"))}
    pids = {int(w.rsplit(":", 1)[1]) for w in workers if w}
    assert pids and parent.pid not in pids, f"the parent ran jobs itself: {workers}"
    assert parent.poll() is None, cluster.logs()


def test_poison_job_ends_dead_while_others_finish_and_a_retry_sends_it_again(cluster: Cluster) -> None:
    cluster.env["SYNTHPIPE_CELERY__RESEND_AFTER_S"] = "600"  # only messages bring jobs back, no sweep
    _photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "3", "--seed", "3")
    code = ("from common.store import jobs; from common.store.db import get_database; from common.queue.dispatch import "
            "install_dispatcher\ndb = get_database(); install_dispatcher(db)\n"
            "with db.session() as s:\n    jobs.enqueue(s, 'vl', 'vl:poison', {'item_set_id': 'not-a-number'})")
    subprocess.run([sys.executable, "-c", code], env=cluster.env, check=True, timeout=60)
    cluster.worker("vl")
    counts = cluster.wait_done("vl", 4)
    assert counts.get("dead") == 1, counts
    assert counts.get("succeeded", 0) + counts.get("skipped", 0) == 3
    with cluster.engine.connect() as c:
        attempts, reason, msg = c.execute(select(Job.attempts, Job.reason, Job.error_message)
                                          .where(Job.key == "vl:poison")).one()
    assert attempts == 3 and reason == "unexpected.ValueError" and "gave up after 3 attempts" in msg
    # `jobs retry` sends the job's message itself (sweeps resend nothing here): it runs again, fresh attempts
    cluster.cli("jobs", "retry", "--stage", "vl", "--status", "dead")

    def poison() -> tuple[str, int]:
        with cluster.engine.connect() as c:
            return tuple(c.execute(select(Job.status, Job.attempts).where(Job.key == "vl:poison")).one())  # type: ignore[return-value]

    _wait(lambda: poison() == ("dead", 3), 90, "the retried job to run its attempts again")
    with cluster.engine.connect() as c:
        events = c.execute(select(JobEvent.action, JobEvent.from_status).join(Job, Job.id == JobEvent.job_id)
                           .where(Job.key == "vl:poison")).all()
    assert [tuple(e) for e in events] == [("retry", "dead")]


def test_redis_restart_and_dropped_database_connections_are_survived(cluster: Cluster,
                                                                     redis_server: RedisServer) -> None:
    _photos(cluster, persons=4, garments=4)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "8", "--seed", "4")
    cluster.worker("vl")
    _wait(lambda: cluster.counts("vl").get("succeeded", 0) + cluster.counts("vl").get("skipped", 0) >= 1,
          120, "a first vl job to finish")
    redis_server.kill()  # every queued message is gone with it
    time.sleep(1)
    redis_server.start()
    dbname = cluster.pg_url.rsplit("/", 1)[1]
    admin = create_engine(cluster.pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": dbname}).scalar()
    admin.dispose()
    assert killed is not None
    counts = cluster.wait_done("vl", 8, timeout=180)
    assert counts.get("succeeded", 0) + counts.get("skipped", 0) == 8, counts
    _one_analysis_per_job(cluster)


def test_worker_refuses_without_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYNTHPIPE_BROKER_URL"}
    env["SYNTHPIPE_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "common.cli", "worker", "vl"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "SYNTHPIPE_BROKER_URL" in out.stderr


def test_flower_behind_basic_auth_shows_the_queues(redis_server: RedisServer, tmp_path: Path) -> None:
    import base64
    import urllib.error
    import urllib.request

    port = _free_port()
    env = {**os.environ, "SYNTHPIPE_DATA_DIR": str(tmp_path), "SYNTHPIPE_BROKER_URL": redis_server.url,
           "SYNTHPIPE_FLOWER__BASIC_AUTH": "ops:s3cret"}
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "flower", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _can_connect(port), 60, "flower to listen")

        def get(path: str, auth: bool) -> tuple[int, bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
            if auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(b"ops:s3cret").decode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, b""

        assert get("/", auth=False)[0] == 401
        status, _ = get("/", auth=True)
        assert status == 200
        status, body = get("/api/queues/length", auth=True)
        assert status == 200
        names = {q["name"] for q in json.loads(body)["active_queues"]}
        assert {"scrape", "vl", "edit"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_flower_refuses_to_start_without_auth(tmp_path: Path) -> None:
    env = {**os.environ, "SYNTHPIPE_DATA_DIR": str(tmp_path), "SYNTHPIPE_BROKER_URL": "redis://127.0.0.1:1/0"}
    env.pop("SYNTHPIPE_FLOWER__BASIC_AUTH", None)
    out = subprocess.run([sys.executable, "-m", "common.cli", "flower"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "SYNTHPIPE_FLOWER__BASIC_AUTH" in out.stderr


@pytest.mark.browser
def test_crawl_chains_through_vl_to_edit(cluster: Cluster) -> None:
    """The producer queues a crawl batch; the scrape, vl and edit workers carry it to edits."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_scrape_stage import _sites_file, make_shop

    with make_shop() as shop:
        sites = _sites_file(cluster.tmp, shop.url("/"))
        for stage in ("scrape", "vl", "edit"):
            cluster.worker(stage)
        cluster.cli("crawl", "--sites", str(sites), "--batches", "1", "--seed", "5")
        cluster.wait_done("scrape", 1, timeout=120)
    assert cluster.counts("scrape").get("succeeded") == 1, cluster.logs()
    n_vl = sum(cluster.counts("vl").values())
    assert n_vl >= 3  # every crawled person photo is in a try-on set
    vl = cluster.wait_done("vl", n_vl)
    cluster.wait_done("edit", vl.get("succeeded", 0))
    assert cluster.scalar(select(func.count()).select_from(Edit)) == vl.get("succeeded", 0) > 0
