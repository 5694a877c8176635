"""The stage registry and the CLI contract: a stage is one registry entry, the CLI can be called
repeatedly in one process, every settings error exits 2 with one line, and ``common`` does not
import its workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.net import wait_for
from fixtures.redis import RedisServer
from sqlalchemy import create_engine, select

from common.store.rows import Job, JobEvent

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_") or k.startswith("SYNTHPIPE_TEST_")}
    env.update({"SYNTHPIPE_DATA_DIR": str(tmp_path / "data"), "SYNTHPIPE_CONFIG": str(tmp_path / "none.toml"),
                "PYTHONPATH": os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")])})
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _queue_toy(db_url: str, numbers: list[int]) -> None:
    from common.store import jobs as jobstore
    from common.store.db import get_database

    db = get_database(db_url)
    with db.session() as s:
        for n in numbers:
            jobstore.enqueue(s, "toy", f"toy:{n}", {"n": n})


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import importlib

    from common.core import stages

    monkeypatch.syspath_prepend(str(PLUGINS))
    importlib.reload(importlib.import_module("toy_stage"))  # registers the stage (again, if a test removed it)
    yield
    stages.unregister("toy")


def test_a_toy_stage_runs_in_local_mode_through_the_cli(tmp_path: Path, toy_registered: None) -> None:
    env = _env(tmp_path, SYNTHPIPE_PLUGINS="toy_stage")
    _queue_toy(f"sqlite:///{tmp_path / 'data' / 'synthpipe.db'}", [2, 3, -1])
    status = json.loads(_cli(env, "status", "--json").stdout)
    assert status["jobs"]["toy"]["queued"] == 3  # status lists the stage from the registry alone
    out = _cli(env, "run", "--stage", "toy", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["toy"] == {"claimed": 3, "succeeded": 2, "failed": 1}
    listed = json.loads(_cli(env, "jobs", "list", "--stage", "toy", "--status", "failed", "--json").stdout)
    assert [j["reason"] for j in listed["jobs"]] == ["toy.negative"]
    assert _cli(env, "run", "--stage", "nope").returncode == 2  # choices come from the registry


def test_dead_jobs_are_retried_and_queued_ones_cancelled_from_the_cli(tmp_path: Path, toy_registered: None) -> None:
    """What a user does after forgetting a setting: the jobs die, the setting is fixed, ``jobs
    retry`` puts them back and a run finishes them; ``jobs cancel`` takes queued jobs out."""
    from common.store import jobs as jobstore
    from common.store.db import get_database

    env = _env(tmp_path, SYNTHPIPE_PLUGINS="toy_stage")
    flag = tmp_path / "setting-fixed"
    db = get_database(f"sqlite:///{tmp_path / 'data' / 'synthpipe.db'}")
    with db.session() as s:
        for n in (2, 3):
            jobstore.enqueue(s, "toy", f"toy:{n}", {"n": n, "needs": str(flag)}, max_attempts=1)
    assert json.loads(_cli(env, "run", "--stage", "toy", "--json").stdout)["toy"] == {"claimed": 2, "dead": 2}
    dead = json.loads(_cli(env, "jobs", "list", "--stage", "toy", "--status", "dead", "--json").stdout)["jobs"]
    assert len(dead) == 2 and all(j["error_kind"] == "transient" and "not there yet" in j["error_message"]
                                  for j in dead)
    assert _cli(env, "jobs", "retry", "--status", "running").returncode == 2  # retry takes ended jobs only
    flag.write_text("ok")
    retried = _cli(env, "jobs", "retry", "--stage", "toy", "--status", "dead", "--actor", "ana", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(_cli(env, "run", "--stage", "toy", "--json").stdout)["toy"] == {"claimed": 2, "succeeded": 2}
    with db.session() as s:
        jobstore.enqueue(s, "toy", "toy:9", {"n": 9})
    assert _cli(env, "jobs", "cancel", "--stage", "toy", "--status", "running").returncode == 2
    assert _cli(env, "jobs", "cancel", "--stage", "toy", "--actor", "ana").returncode == 0
    assert json.loads(_cli(env, "run", "--stage", "toy", "--json").stdout)["toy"] == {"claimed": 0}
    rows = {r["key"]: r for r in jobstore.list_jobs(db, stage="toy")}
    assert [rows[k]["status"] for k in ("toy:2", "toy:3", "toy:9")] == ["succeeded", "succeeded", "cancelled"]
    assert rows["toy:9"]["reason"] == "job.cancelled"
    with db.session() as s:  # each change is on record, with who made it
        events = s.execute(select(JobEvent.action, JobEvent.from_status, JobEvent.to_status, JobEvent.actor)
                           .order_by(JobEvent.id)).all()
    assert [tuple(e) for e in events] == [("retry", "dead", "queued", "ana")] * 2 + [
        ("cancel", "queued", "cancelled", "ana")]


@pytest.mark.postgres
@pytest.mark.redis
def test_a_toy_stage_runs_through_a_real_celery_worker(tmp_path: Path, pg_url: str, toy_registered: None) -> None:

    from common.store.db import Database

    Database(pg_url).upgrade()
    redis = RedisServer(tmp_path)
    redis.start()
    env = _env(tmp_path, SYNTHPIPE_PLUGINS="toy_stage", SYNTHPIPE_DATABASE_URL=pg_url,
               SYNTHPIPE_BROKER_URL=redis.url, SYNTHPIPE_CELERY__SWEEP_INTERVAL_S="1",
               SYNTHPIPE_CELERY__RESEND_AFTER_S="2")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "common.cli", "worker", "toy"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    engine = create_engine(pg_url)
    try:
        # jobs queued by a producer process: its commit sends their messages on the toy queue
        code = ("import toy_stage; from common.cli.base import context; from common.store import jobs; ctx = context()\n"
                "with ctx.db.session() as s:\n    [jobs.enqueue(s, 'toy', f'toy:{n}', {'n': n}) for n in (4, 5, -2)]")
        producer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert producer.returncode == 0, producer.stderr

        def finished() -> bool:
            with engine.connect() as c:
                return c.execute(select(Job.status).where(Job.stage == "toy")).scalars().all().count("queued") == 0 \
                    and len(c.execute(select(Job.id).where(Job.stage == "toy", Job.status.in_(
                        ("succeeded", "failed")))).all()) == 3

        wait_for(finished, 120, "the toy worker to finish its jobs")
        with engine.connect() as c:
            rows = {r.key: (r.status, r.result) for r in c.execute(select(Job.key, Job.status, Job.result)
                                                                   .where(Job.stage == "toy"))}
        assert rows["toy:4"] == ("succeeded", {"square": 16, "batch": 1})
        assert rows["toy:5"][0] == "succeeded" and rows["toy:-2"][0] == "failed"
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        redis.kill()
        engine.dispose()
    assert b"toy.square" in (tmp_path / "worker.log").read_bytes()  # the generic task ran


@pytest.mark.postgres
@pytest.mark.redis
def test_an_overlapping_celery_worker_prepares_the_next_batch_while_the_model_runs(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One task of a ``--overlap`` worker drains several batches, batch k+1 prepared while k runs;
    the messages of the jobs it took find them done and claim nothing."""

    from common.store.db import Database

    monkeypatch.syspath_prepend(str(PLUGINS))
    Database(pg_url).upgrade()
    redis = RedisServer(tmp_path)
    redis.start()
    env = _env(tmp_path, SYNTHPIPE_PLUGINS="toy_phased", SYNTHPIPE_DATABASE_URL=pg_url,
               SYNTHPIPE_BROKER_URL=redis.url, SYNTHPIPE_JOBS__OVERLAP_BATCHES="4")
    refused = _cli(env, "worker", "scrape", "--overlap")  # a stage without phases says so
    assert refused.returncode == 2 and "--overlap does not apply to scrape" in refused.stderr
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "common.cli", "worker", "toyp", "--overlap"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = create_engine(pg_url)
    n_jobs = 6
    try:
        code = ("import toy_phased; from common.cli.base import context; from common.store import jobs; ctx = context()\n"
                f"with ctx.db.session() as s:\n    [jobs.enqueue(s, 'toyp', f'toyp:{{n}}', {{'n': n}}) "
                f"for n in range({n_jobs})]")
        producer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert producer.returncode == 0, producer.stderr

        def finished() -> bool:
            with engine.connect() as c:
                return c.execute(select(Job.status).where(Job.stage == "toyp")).scalars().all().count(
                    "succeeded") == n_jobs
        wait_for(finished, 120, "the overlapping worker to finish its jobs")
        # every message has been handled once the last no-op is logged; wait for the log to say so
        wait_for(lambda: (tmp_path / "worker.log").read_bytes().count(b"nothing to claim") >= 1, 60,
              "a message to find its job done")
        with engine.connect() as c:
            results = sorted((r for r in c.execute(select(Job.result, Job.attempts).where(Job.stage == "toyp"))),
                             key=lambda r: r.result["ran"][0])
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        redis.kill()
        engine.dispose()
    assert all(r.attempts == 1 for r in results)  # each job ran exactly once
    assert len({r.result["pid"] for r in results}) == 1
    overlapped = sum(1 for a, b in zip(results, results[1:], strict=False)
                     if b.result["prepared"][0] < a.result["ran"][1] and b.result["prepared"][1] > a.result["ran"][0])
    assert overlapped >= n_jobs // 2, [r.result for r in results]  # k+1 was prepared while k was on the model
    text = (tmp_path / "worker.log").read_text()
    assert text.count("(overlapped)") == n_jobs  # one line per batch of one, all from overlapped runs


def test_main_can_be_called_repeatedly_in_one_process(tmp_path: Path) -> None:
    code = "from common.cli import main; main(['status']); main(['status', '--json']); main(['jobs', 'list'])"
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"jobs": {"scrape"' in out.stdout and "no jobs match" in out.stdout


def test_settings_leave_the_workers_unimported(tmp_path: Path) -> None:
    code = ("import sys; from common.core.settings import get_settings; get_settings(); import common.cli; "
            "from common.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('worker_') "
            "or m.split('.')[0] in ('torch', 'transformers', 'diffusers', 'selenium')))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.postgres
def test_every_settings_error_exits_2_with_one_line(tmp_path: Path, pg_url: str) -> None:
    cases = {
        "worker without a broker": (["worker", "vl"], {}),
        "flower without auth": (["flower"], {"SYNTHPIPE_BROKER_URL": "redis://127.0.0.1:1/0"}),
        "database needing an upgrade": (["status"], {"SYNTHPIPE_DATABASE_URL": pg_url}),  # a fresh, empty database
        "misspelt variable": (["status"], {"SYNTHPIPE_DATABSE_URL": "sqlite:///x.db"}),
        "unknown plugin": (["status"], {"SYNTHPIPE_PLUGINS": "no_such_plugin"}),
    }
    for what, (args, extra) in cases.items():
        out = _cli(_env(tmp_path, **extra), *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (what, out.returncode, out.stderr[-2000:])
    assert "did you mean SYNTHPIPE_DATABASE_URL" in _cli(_env(tmp_path, SYNTHPIPE_DATABSE_URL="x"), "status").stderr


def test_a_toml_error_names_the_file_and_key(tmp_path: Path) -> None:
    toml = tmp_path / "synthpipe.toml"
    toml.write_text("[vl]\nbatch_size = 0\n")
    out = _cli(_env(tmp_path, SYNTHPIPE_CONFIG=str(toml)), "status")
    assert out.returncode == 2
    assert f"{toml}: [vl] batch_size" in out.stderr and "SYNTHPIPE_VL__BATCH_SIZE" not in out.stderr


def test_the_scrape_extra_installs_no_torch() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", "-", f"{root}[scrape]"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(out.stdout)["install"]}
    assert "selenium" in names and "protego" in names  # the report is real
    assert not names & {"torch", "transformers", "diffusers", "celery", "bitsandbytes", "xgrammar"}, names


def test_a_missing_extra_names_its_install_command(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['selenium'] = None; sys.modules['celery'] = None\n"
            "from common.cli import main\n"
            "from common.cli.base import context\n"
            "from common.store import jobs\n"
            "ctx = context()\n"
            "with ctx.db.session() as s: jobs.enqueue(s, 'scrape', 'scrape:x', {})\n"
            "codes = [main(['run', '--stage', 'scrape']), main(['worker', 'vl'])]\n"
            "print(codes, jobs.counts(ctx.db)['scrape']['queued'])")
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[2, 2] 1", out.stderr[-2000:]  # the job went back to the queue
    assert "pip install 'synthpipe[scrape]'" in out.stderr and "pip install 'synthpipe[distributed]'" in out.stderr
