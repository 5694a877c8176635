"""Distributed mode with real parts: a Redis of the test's own on 127.0.0.1, the real
PostgreSQL, real `synthpipe worker` subprocesses on tiny models, and faults injected into each."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.cluster import Cluster, ingest_photos, one_analysis_per_job
from fixtures.net import wait_for
from fixtures.redis import RedisServer
from sqlalchemy import create_engine, func, select, text

from common.store.rows import Analysis, Edit, Job, JobEvent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_stages_chain_and_sigkill_mid_batch_finishes_exactly_once(cluster: Cluster) -> None:
    ingest_photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "1")  # sends 6 vl messages
    doomed = cluster.worker("vl", "--overlap")  # killed holding up to three batches
    wait_for(lambda: cluster.counts("vl").get("running", 0) > 0, 90, "a vl job to start")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    held = cluster.counts("vl").get("running", 0)
    assert held > 0, "the worker was killed holding no job"
    cluster.worker("vl", "--overlap")
    cluster.worker("edit", "--overlap")
    vl = cluster.wait_done("vl", 6)
    assert vl.get("succeeded", 0) + vl.get("skipped", 0) == 6, vl
    one_analysis_per_job(cluster)
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

    ingest_photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "2")
    w = cluster.worker("vl")
    wait_for(lambda: cluster.counts("vl").get("running", 0) > 0, 90, "a vl job to start")
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
    one_analysis_per_job(cluster)


def test_prefork_pool_children_load_their_own_model_and_finish_each_job_once(cluster: Cluster) -> None:
    """`--concurrency 2` (prefork): children fork from a parent that holds no model and no
    database connection of theirs; each job runs once and is recorded by a child."""
    ingest_photos(cluster)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "5", "--seed", "5")
    parent = cluster.worker("vl", "--concurrency", "2")
    counts = cluster.wait_done("vl", 5)
    assert counts.get("succeeded", 0) + counts.get("skipped", 0) == 5, counts
    one_analysis_per_job(cluster)
    with cluster.engine.connect() as c:
        workers = {w for (w,) in c.execute(select(Job.worker).where(Job.stage == "vl"))}
    pids = {int(w.rsplit(":", 1)[1]) for w in workers if w}
    assert pids and parent.pid not in pids, f"the parent ran jobs itself: {workers}"
    assert parent.poll() is None, cluster.logs()


def test_poison_job_ends_dead_while_others_finish_and_a_retry_sends_it_again(cluster: Cluster) -> None:
    cluster.env["SYNTHPIPE_CELERY__RESEND_AFTER_S"] = "600"  # only messages bring jobs back, no sweep
    ingest_photos(cluster)
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

    wait_for(lambda: poison() == ("dead", 3), 90, "the retried job to run its attempts again")
    with cluster.engine.connect() as c:
        events = c.execute(select(JobEvent.action, JobEvent.from_status).join(Job, Job.id == JobEvent.job_id)
                           .where(Job.key == "vl:poison")).all()
    assert [tuple(e) for e in events] == [("retry", "dead")]


def test_redis_restart_and_dropped_database_connections_are_survived(cluster: Cluster,
                                                                     redis_server: RedisServer) -> None:
    ingest_photos(cluster, persons=4, garments=4)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "8", "--seed", "4")
    cluster.worker("vl")
    wait_for(lambda: cluster.counts("vl").get("succeeded", 0) + cluster.counts("vl").get("skipped", 0) >= 1,
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
    one_analysis_per_job(cluster)


def test_worker_refuses_without_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYNTHPIPE_BROKER_URL"}
    env["SYNTHPIPE_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "common.cli", "worker", "vl"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "SYNTHPIPE_BROKER_URL" in out.stderr


@pytest.mark.browser
def test_crawl_chains_through_vl_to_edit(cluster: Cluster) -> None:
    """The producer queues a crawl batch; the scrape, vl and edit workers carry it to edits."""
    from fixtures.shops import make_shop, sites_file

    with make_shop() as shop:
        sites = sites_file(cluster.tmp, shop.url("/"))
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
