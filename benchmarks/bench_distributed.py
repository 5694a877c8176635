"""Distributed mode end to end: throughput and orchestration overhead with real workers.

    python benchmarks/bench_distributed.py                      # 8 vl jobs, 1 then 2 workers, batch 2, tiny models
    python benchmarks/bench_distributed.py --jobs 16 --workers 1,2,4 --batch-size 4
    python benchmarks/bench_distributed.py --with-edit          # vl and edit workers together: the whole chain
    python benchmarks/bench_distributed.py --vl-model /ckpt/vl --edit-model /ckpt/edit   # other checkpoints

Needs PostgreSQL on 127.0.0.1 (``--pg-url``, default postgres@127.0.0.1:5432, no password) and
the ``redis-server`` binary. Everything it starts listens on 127.0.0.1 only, and it refuses a
database URL whose host is not this machine. It and its workers ignore the caller's ``SYNTHPIPE_*``
settings and any ``synthpipe.toml`` (``--device`` picks the model device).

Per configuration (K workers per queue, batch size B), on a fresh PostgreSQL database and its
own redis-server (free port, no persistence, flushed between configurations):

1. ``synthpipe db upgrade``, ``synthpipe ingest`` of drawn sample photos, ``synthpipe pair
   --recipe tryon --limit N`` (queues N vl jobs and sends their messages);
2. **burst**: starts K real ``synthpipe worker vl --batch-size B`` processes (plus K edit
   workers with ``--with-edit``) and waits until every job is final;
3. **trickle**: with the same workers now warm and idle, queues T more jobs one at a time
   (the code ``synthpipe pair`` runs, in this process), each after the last one finished, so
   every job meets an idle worker and an empty queue (one more job first, not counted, opens
   this process's connection to Redis);
4. stops the workers (SIGTERM to each process group, SIGKILL after a grace period) and drops
   the database.

Each configuration runs in two modes: ``model`` (the stage as shipped, tiny random-weight
checkpoints by default) and ``noop``, the baseline of pure orchestration: the same worker
command (Celery on Redis, claim, lease heartbeat, record, PostgreSQL) with the vl stage
function replaced by one that returns success at once, writing no analysis.

Measured from the ``jobs`` table (created_at, started_at = claim, finished_at = record) and
the model timings the stages record (``analyses.timings`` / ``edits.timings``: ``seconds`` per
item, ``batch_seconds`` of the model call, ``batch_size``):

- burst: wall time from starting the workers to the last job recorded, jobs/s, start-up
  (workers started → first claim), model load (from the worker logs), mean model s/job
  (batch_seconds / batch_size), model busy (sum of model-call time / (K x wall)), and the
  in-worker overhead per job: (finished - started) - batch_seconds, less the model load for a
  worker's first batch: preparing inputs, recording, writing outputs, queueing the next stage;
- trickle: enqueue→done latency and overhead = latency - batch_seconds (the model call the job
  was part of), split into dispatch (commit, message, broker, worker pick-up, claim) and the
  in-worker part; with ``--with-edit`` also the chain (vl enqueued → edit recorded, less both
  model calls).

Worker processes share this machine's cores: K workers per queue mean K (or 2K) processes
computing at once, which the printed header states next to the core count.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

DEFAULT_PG = os.environ.get("SYNTHPIPE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
PAIR_SEED = 7
FINAL = ("succeeded", "skipped", "failed", "dead")
LOAD_LINE = re.compile(r"\b(vl|edit): loaded .* in ([0-9.]+) s")
ORIGINAL_ENV = dict(os.environ)  # before this process points its own settings at a benchmark database


# --------------------------------------------------------------------------- no-op stage


def noop_batch(jobs: list[Any], ctx: Any) -> list[Any]:
    """A stage that does nothing: every job succeeds at once and writes no output."""
    from common.store.jobs import Outcome

    return [Outcome.ok({"noop": True}) for _ in jobs]


def noop_worker(argv: list[str]) -> int:
    """``synthpipe worker ARGV`` with the named stage's batch function replaced by ``noop_batch``."""
    from dataclasses import replace

    from common.cli import main as cli_main
    from common.core import stages

    # the registry entry names the batch function; it is imported by name on each batch
    stages.register(replace(stages.get(argv[0]), batch=f"{__name__}:noop_batch", phases=None))
    return cli_main(["worker", *argv])


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


class Processes:
    """Every process this benchmark starts, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if log:
            out.close()  # type: ignore[union-attr]  # the child holds its own descriptor
        self.procs.append(proc)
        return proc

    def stop(self, procs: Sequence[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
        """SIGTERM each group (a warm shutdown for workers), then SIGKILL what is left."""
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in procs:
            _signal_group(p, signal.SIGKILL)  # also any child the leader left behind
            p.wait()
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self) -> None:
        self.stop(list(self.procs), grace=10.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class RedisServer:
    """A redis-server of the benchmark's own on 127.0.0.1, without persistence."""

    def __init__(self, procs: Processes, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = procs.start(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(workdir)], log=workdir / "redis.log")
        if not _wait(self._up, 15):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


# --------------------------------------------------------------------------- database


def _check_local(url: str) -> None:
    from sqlalchemy.engine import make_url

    host = make_url(url).host or "localhost"
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"refusing {url!r}: this benchmark creates and drops databases on 127.0.0.1 only")


def _admin(url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(url, isolation_level="AUTOCOMMIT")


def create_database(admin_url: str) -> str:
    from common.devkit.scratch import create_scratch_database

    return create_scratch_database(admin_url, "synthpipe_bench")


def drop_database(admin_url: str, url: str) -> None:
    from common.devkit.scratch import drop_scratch_database

    drop_scratch_database(admin_url, url)


# --------------------------------------------------------------------------- statistics


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    return {"mean": _r(_mean(values)), "p50": _r(_pct(values, 0.5)), "p95": _r(_pct(values, 0.95)),
            "max": _r(max(values) if values else None)}


@dataclass
class JobRow:
    id: int
    stage: str
    status: str
    attempts: int
    worker: str | None
    parent_id: int | None
    created: float
    started: float | None
    finished: float | None
    timings: dict[str, Any] | None

    @property
    def model_call(self) -> float:
        """Seconds of the model call this job was part of (0 without one)."""
        return float((self.timings or {}).get("batch_seconds", 0.0))

    @property
    def model_share(self) -> float | None:
        t = self.timings or {}
        if "batch_seconds" not in t:
            return None
        return float(t["batch_seconds"]) / max(1, int(t.get("batch_size", 1)))


def _ts(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def read_jobs(engine: Any, after_id: int = 0) -> list[JobRow]:
    """Jobs with ids above ``after_id``, with the model timings their outputs recorded."""
    from sqlalchemy import text

    sql = text("SELECT j.id, j.stage, j.status, j.attempts, j.worker, j.parent_id, j.created_at, j.started_at, "
               "j.finished_at, COALESCE(a.timings, e.timings) FROM jobs j "
               "LEFT JOIN analyses a ON a.job_id = j.id LEFT JOIN edits e ON e.job_id = j.id "
               "WHERE j.id > :after ORDER BY j.id")
    with engine.connect() as c:
        rows = c.execute(sql, {"after": after_id}).all()
    out = []
    for r in rows:
        timings = r[9] if isinstance(r[9], dict) or r[9] is None else json.loads(r[9])
        out.append(JobRow(r[0], r[1], r[2], r[3], r[4], r[5], _ts(r[6]) or 0.0, _ts(r[7]), _ts(r[8]), timings))
    return out


def count_unfinished(engine: Any, stages: Sequence[str], after_id: int = 0) -> int:
    from sqlalchemy import bindparam, text

    sql = text("SELECT count(*) FROM jobs WHERE stage IN :stages AND id > :after AND status NOT IN :final")
    sql = sql.bindparams(bindparam("stages", expanding=True), bindparam("final", expanding=True))
    with engine.connect() as c:
        return int(c.execute(sql, {"stages": list(stages), "after": after_id, "final": list(FINAL)}).scalar_one())


def load_seconds(logs: dict[str, Path]) -> dict[str, float]:
    """Model load time per worker id (``host:pid``), from the worker logs."""
    out: dict[str, float] = {}
    for worker, path in logs.items():
        try:
            match = LOAD_LINE.search(path.read_text(errors="replace"))
        except OSError:
            continue
        if match:
            out[worker] = float(match.group(2))
    return out


def burst_row(mode: str, stage: str, k: int, b: int, jobs: list[JobRow], t0: float, loads: dict[str, float],
              timed_out: bool) -> dict[str, Any]:
    done = [j for j in jobs if j.status in FINAL and j.finished is not None]
    finished = [j.finished for j in done if j.finished is not None]
    statuses = {s: sum(j.status == s for j in jobs) for s in ("succeeded", "skipped", "failed", "dead")}
    statuses["unfinished"] = len(jobs) - len(done)
    started = [j.started for j in jobs if j.started is not None]
    wall = (max(finished) - t0) if finished else None
    # A batch is the jobs one worker ran in one model call: same worker, same recorded
    # batch_seconds (a claim takes the named job and the fill-up in two statements, so their
    # started_at differ by milliseconds). Jobs without timings (noop, failed) stand alone.
    def batch_key(j: JobRow) -> tuple[str | None, float | None]:
        return (j.worker, j.model_call) if j.timings else (j.worker, j.started)

    earliest: dict[str, JobRow] = {}
    for j in sorted((j for j in jobs if j.worker and j.started is not None), key=lambda j: j.started or 0.0):
        earliest.setdefault(j.worker or "", j)
    first_batches = {batch_key(j) for j in earliest.values()}
    overheads, shares = [], []
    batches: dict[tuple[str | None, float | None], float] = {}
    for j in done:
        if j.started is None or j.finished is None or (mode == "model" and not j.timings):
            continue  # a failed model job recorded no timings: its model time is unknown
        load = loads.get(j.worker or "", 0.0) if batch_key(j) in first_batches else 0.0
        overheads.append(j.finished - j.started - j.model_call - load)
        if j.model_share is not None:
            shares.append(j.model_share)
            batches[batch_key(j)] = j.model_call
    worker_loads = [v for w, v in loads.items() if w in earliest]
    return {
        "phase": "burst", "mode": mode, "stage": stage, "workers": k, "batch_size": b, "jobs": len(jobs),
        "statuses": statuses, "timed_out": timed_out, "wall_s": _r(wall, 2),
        "startup_s": _r(min(started) - t0 if started else None, 2),
        "load_s": _r(_mean(worker_loads), 2),
        "jobs_per_s": _r(len(done) / wall if wall else None, 3),
        "jobs_per_s_after_start": _r(len(done) / (wall - (min(started) - t0)) if wall and started else None, 3),
        "model_s_per_job": _r(_mean(shares)),
        "completion_tokens_per_job": _r(_mean([float(j.timings["completion_tokens"]) for j in done
                                               if j.timings and "completion_tokens" in j.timings]), 1),
        "model_busy": _r(sum(batches.values()) / (k * wall) if wall else None, 3),
        "overhead_s": _summary(overheads),
    }


def trickle_rows(mode: str, k: int, jobs: list[JobRow], chain: bool) -> list[dict[str, Any]]:
    rows = []
    for stage in ("vl", "edit") if chain else ("vl",):
        mine = [j for j in jobs if j.stage == stage and j.finished is not None and j.started is not None
                and j.status in ("succeeded", "skipped")]
        e2e = [j.finished - j.created for j in mine]  # type: ignore[operator]
        rows.append({
            "phase": "trickle", "mode": mode, "stage": stage, "workers": k, "jobs": len(mine),
            "latency_s": _summary(e2e),
            "dispatch_s": _summary([j.started - j.created for j in mine]),  # type: ignore[operator]
            "model_call_s": _r(_mean([j.model_call for j in mine if j.timings])),
            "completion_tokens_per_job": _r(_mean([float(j.timings["completion_tokens"]) for j in mine
                                                   if j.timings and "completion_tokens" in j.timings]), 1),
            "in_worker_s": _summary([j.finished - j.started - j.model_call for j in mine]),  # type: ignore[operator]
            "overhead_s": _summary([j.finished - j.created - j.model_call for j in mine]),  # type: ignore[operator]
        })
    if chain:
        by_id = {j.id: j for j in jobs}
        pairs = [(by_id[e.parent_id], e) for e in jobs
                 if e.stage == "edit" and e.status == "succeeded" and e.finished is not None
                 and e.parent_id in by_id and e.timings and by_id[e.parent_id].timings]
        rows.append({
            "phase": "trickle", "mode": mode, "stage": "vl->edit", "workers": k, "jobs": len(pairs),
            "latency_s": _summary([e.finished - v.created for v, e in pairs]),  # type: ignore[operator]
            "dispatch_s": None,
            "model_call_s": _r(_mean([v.model_call + e.model_call for v, e in pairs])),
            "in_worker_s": None,
            "overhead_s": _summary([e.finished - v.created - v.model_call - e.model_call  # type: ignore[operator]
                                    for v, e in pairs]),
        })
    return rows


# --------------------------------------------------------------------------- one configuration


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Processes
    redis: RedisServer
    models: dict[str, str]
    photos: dict[str, Path]
    deadline: float
    notes: list[str]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def env(self, workdir: Path, db_url: str) -> dict[str, str]:
        from isolation import clean_env

        from common.devkit.tinymodels import tiny_run_settings

        env = clean_env(ORIGINAL_ENV)  # none of the caller's SYNTHPIPE_* settings: the bench sets its own
        tiny = tiny_run_settings()
        if self.args.vl_model:
            tiny = {k: v for k, v in tiny.items() if not k.startswith("SYNTHPIPE_VL__")}
        if self.args.edit_model:
            tiny = {k: v for k, v in tiny.items() if not k.startswith("SYNTHPIPE_EDIT__")}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "SYNTHPIPE_CONFIG": str(workdir / "synthpipe.toml"),  # absent: no settings file is read
            "SYNTHPIPE_DATA_DIR": str(workdir / "data"),
            "SYNTHPIPE_DATABASE_URL": db_url,
            "SYNTHPIPE_STORAGE_URL": (workdir / "objects").as_uri(),
            "SYNTHPIPE_BROKER_URL": self.redis.url,
            "SYNTHPIPE_VL_MODEL": self.models["vl"],
            "SYNTHPIPE_EDIT_MODEL": self.models.get("edit", "timbrooks/instruct-pix2pix"),
            **tiny,
        })
        if self.args.device:
            env.update({"SYNTHPIPE_VL__DEVICE": self.args.device, "SYNTHPIPE_EDIT__DEVICE": self.args.device})
        return env

    def cli(self, env: dict[str, str], workdir: Path, *args: str) -> str:
        timeout = max(5.0, min(180.0, self.remaining()))
        out = subprocess.run([sys.executable, "-m", "common.cli", *args], env=env, cwd=workdir,
                             capture_output=True, text=True, timeout=timeout, start_new_session=True)
        if out.returncode != 0:
            raise RuntimeError(f"synthpipe {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
        return out.stdout

    def run(self, mode: str, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """One configuration: fresh database, burst, trickle; returns (burst rows, trickle rows)."""
        from sqlalchemy import create_engine

        args = self.args
        chain = args.with_edit and mode == "model"
        n = args.noop_jobs if mode == "noop" else args.jobs
        trickle = args.noop_trickle if mode == "noop" else args.trickle
        b = args.batch_size
        workdir = self.tmp / f"{mode}-k{k}"
        workdir.mkdir()
        with self.redis.client() as rc:
            rc.flushall()
        db_url = create_database(args.pg_url)
        engine = create_engine(db_url, pool_pre_ping=True)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            env = self.env(workdir, db_url)
            self.cli(env, workdir, "db", "upgrade")
            for role, folder in self.photos.items():
                self.cli(env, workdir, "ingest", str(folder), "--role", role)
            report = json.loads(self.cli(env, workdir, "pair", "--recipe", "tryon", "--limit", str(n),
                                         "--seed", str(PAIR_SEED), "--json"))
            if report["jobs"] != n:
                raise RuntimeError(f"pairing queued {report['jobs']} jobs, wanted {n}: {report}")

            stages = ["vl", "edit"] if chain else ["vl"]
            logs: dict[str, Path] = {}
            t0 = time.time()
            for stage in stages:
                for i in range(k):
                    cmd = ([sys.executable, str(Path(__file__).resolve()), "_noop_worker"] if mode == "noop"
                           else [sys.executable, "-m", "common.cli", "worker"])
                    log = workdir / f"worker-{stage}-{i}.log"
                    p = self.procs.start([*cmd, stage, "--batch-size", str(b), "--loglevel", "INFO"],
                                         env=env, cwd=workdir, log=log)
                    workers.append(p)
                    logs[f"{socket.gethostname()}:{p.pid}"] = log

            def unfinished() -> int:
                return count_unfinished(engine, stages)

            burst_done = _wait(lambda: unfinished() == 0 or any(p.poll() is not None for p in workers),
                               min(args.timeout, max(0.0, self.remaining())), every=0.25)
            if any(p.poll() is not None for p in workers):
                self.notes.append(f"{mode} K={k}: a worker exited early; its log is on stderr")
                for path in logs.values():
                    sys.stderr.write(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}\n")
            timed_out = not burst_done or unfinished() > 0
            burst_jobs = read_jobs(engine)
            loads = load_seconds(logs)
            bursts = [burst_row(mode, s, k, b, [j for j in burst_jobs if j.stage == s], t0, loads, timed_out)
                      for s in stages]
            if timed_out:
                self.notes.append(f"{mode} K={k}: burst ended with jobs unfinished (time limit, or a worker exited)")
                return bursts, []

            # Trickle: wait for the broker queues to drain (messages of jobs that were claimed
            # in another job's batch are no-ops), then one job at a time.
            with self.redis.client() as rc:
                _wait(lambda: all(rc.llen(s) == 0 for s in stages), 15)
            time.sleep(1.0)
            last_id = max((j.id for j in burst_jobs), default=0)
            trickles: list[JobRow] = []
            if trickle:
                db = _in_process_db(env)
                from common.core.settings import get_settings
                from common.domain.pairing import pair

                # The first trickle job is a warm-up, not counted: it opens this process's
                # producer connection to Redis, which a long-running enqueuer holds already.
                for i in range(trickle + 1):
                    if self.remaining() < 10:
                        self.notes.append(f"{mode} K={k}: trickle cut short by --max-seconds after {max(0, i - 1)} jobs")
                        break
                    with db.session() as s:
                        made = pair(s, get_settings(), "tryon", limit=n + i + 1, seed=PAIR_SEED).jobs
                    if made != 1:
                        raise RuntimeError(f"trickle pairing queued {made} jobs, wanted 1")

                    # vl done, and with the chain its edit job (queued when vl succeeds) done too
                    def settled(after: int = last_id) -> bool:
                        return count_unfinished(engine, stages, after) == 0 and _edit_known(engine, after, chain)

                    if not _wait(settled, min(args.job_timeout, max(1.0, self.remaining())), every=0.1):
                        self.notes.append(f"{mode} K={k}: trickle job {i} not done in {args.job_timeout:.0f} s")
                        break
                    new = read_jobs(engine, last_id)
                    if i > 0:
                        trickles += new
                    last_id = max(j.id for j in new)
                    time.sleep(0.5)  # the worker acknowledges and goes back to waiting for messages
            return bursts, trickle_rows(mode, k, trickles, chain)
        finally:
            self.procs.stop(workers)
            engine.dispose()
            _forget_in_process_db()
            drop_database(args.pg_url, db_url)


def _edit_known(engine: Any, after_id: int, chain: bool) -> bool:
    """Without the chain, always; with it, once the new vl job's edit job exists (or it has none)."""
    if not chain:
        return True
    from sqlalchemy import text

    with engine.connect() as c:
        vl_status = c.execute(text("SELECT status FROM jobs WHERE stage = 'vl' AND id > :a"), {"a": after_id}).scalar()
        edits = c.execute(text("SELECT count(*) FROM jobs WHERE stage = 'edit' AND id > :a"), {"a": after_id}).scalar()
    return vl_status != "succeeded" or bool(edits)


def _in_process_db(env: dict[str, str]) -> Any:
    """This process's Database for ``env``'s settings, sending messages after commits."""
    from common.core.settings import reset_settings
    from common.queue.dispatch import install_dispatcher
    from common.store.db import get_database, reset_databases

    for key in [k for k in os.environ if k.startswith("SYNTHPIPE_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("SYNTHPIPE_")})
    reset_settings()
    reset_databases()
    db = get_database(env["SYNTHPIPE_DATABASE_URL"])
    install_dispatcher(db)
    return db


def _forget_in_process_db() -> None:
    if "common.store.db" in sys.modules:
        from common.store.db import reset_databases

        reset_databases()


# --------------------------------------------------------------------------- output


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def print_tables(bursts: list[dict[str, Any]], trickles: list[dict[str, Any]]) -> None:
    print("\nburst: N jobs queued before K workers start; wall = workers started -> last job recorded")
    print(f"{'mode':<6} {'stage':<5} {'K':>2} {'B':>2} {'jobs':>5} {'ok':>4} {'wall s':>7} {'start s':>7} "
          f"{'load s':>6} {'jobs/s':>7} {'running':>7} {'model s/job':>11} {'busy':>5} {'ovh mean':>8} {'p50':>6} {'p95':>6}")
    for r in bursts:
        ok = r["statuses"]["succeeded"] + r["statuses"]["skipped"]
        o = r["overhead_s"]
        print(f"{r['mode']:<6} {r['stage']:<5} {r['workers']:>2} {r['batch_size']:>2} {r['jobs']:>5} {ok:>4} "
              f"{_f(r['wall_s']):>7} {_f(r['startup_s']):>7} {_f(r['load_s']):>6} {_f(r['jobs_per_s'], 3):>7} {_f(r['jobs_per_s_after_start'], 3):>7} "
              f"{_f(r['model_s_per_job'], 3):>11} {_f(r['model_busy']):>5} {_f(o['mean'], 3):>8} "
              f"{_f(o['p50'], 3):>6} {_f(o['p95'], 3):>6}"
              + ("  (timed out)" if r["timed_out"] else ""))
    if not trickles:
        return
    print("\ntrickle: one job at a time into warm, idle workers; overhead = enqueue->done - model call")
    print(f"{'mode':<6} {'stage':<8} {'K':>2} {'jobs':>4} {'e2e p50':>8} {'dispatch p50':>12} {'in-worker p50':>13} "
          f"{'model s':>8} {'ovh mean':>8} {'p50':>6} {'p95':>6}")
    for r in trickles:
        o = r["overhead_s"]
        d = r["dispatch_s"]["p50"] if r["dispatch_s"] else None
        w = r["in_worker_s"]["p50"] if r["in_worker_s"] else None
        print(f"{r['mode']:<6} {r['stage']:<8} {r['workers']:>2} {r['jobs']:>4} {_f(r['latency_s']['p50'], 3):>8} "
              f"{_f(d, 3):>12} {_f(w, 3):>13} {_f(r['model_call_s'], 3):>8} {_f(o['mean'], 3):>8} "
              f"{_f(o['p50'], 3):>6} {_f(o['p95'], 3):>6}")


LEGEND = """
columns:
  ok           jobs ending succeeded or skipped (the rest failed, died, or were unfinished)
  start s      workers started -> first claim of the stage (interpreter, imports, Celery start-up,
               broker connection; for edit also the wait for the first vl batch to be recorded)
  jobs/s       jobs / wall;  running: jobs / (wall - start s), once the workers are up
  load s       model load inside the worker's first batch, mean per worker (from its log; - for noop)
  model s/job  model-call seconds / batch size: the model compute each job costs
  busy         sum of model-call seconds / (K x wall): the share of worker time spent in the model
  ovh (burst)  per job: (finished - claimed) - model call - model load (first batch only):
               inputs read from the database and storage, prompt rendering, recording the job,
               writing its output rows, queueing and sending the next stage's job
  e2e          trickle: enqueue -> recorded, with the queue empty and workers idle
  dispatch     enqueue -> claim: commit, message to Redis, Celery delivery, claim in PostgreSQL
  in-worker    claim -> record, less the model call
  ovh (trickle) enqueue -> recorded, less the model call: the per-job cost of the distributed path
baseline "noop": the same worker command with the stage function replaced by one that succeeds
at once and writes nothing, so every second it shows is orchestration (messaging, claiming,
lease heartbeat thread, recording); "model" rows run the real stage."""


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_noop_worker":
        return noop_worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=8, help="vl jobs queued for the burst (model mode)")
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts per queue")
    ap.add_argument("--batch-size", type=int, default=2, help="jobs per model call (worker --batch-size)")
    ap.add_argument("--trickle", type=int, default=3, help="jobs queued one at a time after the burst (model mode)")
    ap.add_argument("--noop-jobs", type=int, default=32, help="burst jobs for the no-op baseline")
    ap.add_argument("--noop-trickle", type=int, default=10, help="trickle jobs for the no-op baseline")
    ap.add_argument("--modes", default="noop,model", help="which of noop,model to run")
    ap.add_argument("--with-edit", action="store_true", help="model mode: K edit workers too; measure the chain")
    ap.add_argument("--vl-model", help="VL checkpoint (default: a tiny random Qwen2.5-VL built here)")
    ap.add_argument("--edit-model", help="edit checkpoint (default: a tiny random InstructPix2Pix built here)")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="admin URL of the PostgreSQL server on 127.0.0.1")
    ap.add_argument("--device", help="model mode: the workers' vl and edit device (default: the settings' auto)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a burst may take")
    ap.add_argument("--job-timeout", type=float, default=120, help="seconds one trickle job may take")
    ap.add_argument("--max-seconds", type=float, default=1200, help="the whole run stops after this")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-distributed-")  # own data dir, database and storage; none of the caller's settings
    workers = [int(x) for x in args.workers.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("noop", "model") for m in modes) or not modes:
        ap.error("--modes takes noop and/or model")
    if min(workers) < 1 or args.batch_size < 1 or args.jobs < 1 or args.noop_jobs < 1:
        ap.error("--workers, --batch-size, --jobs and --noop-jobs must be positive")
    _check_local(args.pg_url)
    if shutil.which("redis-server") is None:
        ap.error("redis-server is not on PATH")

    started = time.monotonic()
    deadline = started + args.max_seconds
    procs = Processes()
    # A SIGTERM or SIGHUP to the benchmark unwinds like Ctrl-C, so every process and database goes.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    bursts: list[dict[str, Any]] = []
    trickles: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            from common.devkit import samples
            from common.devkit.tinymodels import build_one

            models: dict[str, str] = {}
            build_s = time.perf_counter()
            models["vl"] = args.vl_model or str(build_one("vl", tmp / "models"))
            if args.with_edit:
                models["edit"] = args.edit_model or str(build_one("edit", tmp / "models"))
            build_s = time.perf_counter() - build_s
            total = max(args.jobs + args.trickle, args.noop_jobs + args.noop_trickle) + 1
            photos = samples.write_samples(tmp / "photos", persons=max(4, math.ceil(total / 20)), garments=6,
                                           seed=11)
            redis = RedisServer(procs, tmp)
            bench = Bench(args, tmp, procs, redis, models, photos, deadline, notes)
            print(f"cores {os.cpu_count()}, batch size {args.batch_size}, workers per queue {workers}, "
                  f"stages {'vl+edit' if args.with_edit else 'vl'}, redis {redis.url}, models "
                  f"{json.dumps(models)} (built in {build_s:.0f} s)", flush=True)
            for mode in modes:
                for k in workers:
                    if bench.remaining() < 30:
                        notes.append(f"{mode} K={k}: skipped, --max-seconds reached")
                        continue
                    n_proc = k * (2 if args.with_edit and mode == "model" else 1)
                    print(f"... {mode}, {k} worker(s) per queue: {n_proc} worker processes on "
                          f"{os.cpu_count()} cores", flush=True)
                    try:
                        b_rows, t_rows = bench.run(mode, k)
                    except Exception as exc:  # report it and go on with the next configuration
                        notes.append(f"{mode} K={k}: failed: {type(exc).__name__}: {exc}")
                        continue
                    bursts += b_rows
                    trickles += t_rows
        finally:
            procs.stop_all()
    print_tables(bursts, trickles)
    print(LEGEND)
    for note in notes:
        print(f"note: {note}")
    print(json.dumps({"benchmark": "distributed", "cores": os.cpu_count(), "batch_size": args.batch_size,
                      "with_edit": args.with_edit, "seconds": round(time.monotonic() - started, 1),
                      "burst": bursts, "trickle": trickles}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
