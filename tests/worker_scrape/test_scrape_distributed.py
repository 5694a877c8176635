"""Distributed mode: one `synthpipe worker scrape --pool threads --concurrency 2` (a real Celery
worker on its own Redis and a fresh PostgreSQL database) crawls two sites at once, sharing one
crawler, so each host's delay still holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.net import free_port
from fixtures.testsite import SiteServer, image, page
from sqlalchemy import create_engine, func, select

from common.store.rows import Job  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


def test_a_threads_pool_worker_crawls_two_sites_at_once_politely(pg_url: str, tmp_path: Path) -> None:
    from common.store.db import Database

    Database(pg_url).upgrade()
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = [SiteServer(f"127.0.0.{21 + i}") for i in range(2)]
    for srv in servers:
        srv.routes["/"] = page("".join(f'<a href="/p{i}">p</a>' for i in range(3)))
        for i in range(3):
            srv.routes[f"/p{i}"] = page(f'<img src="/img/{i}.png">')
            srv.routes[f"/img/{i}.png"] = image(size=(96, 96), noise=True)
    sites = tmp_path / "sites.yaml"
    sites.write_text("categories:\n  - name: shops\n    sites:\n" + "".join(f"""
      - name: shop-{i}
        start_urls: ["{srv.url('/')}"]
        delay_s: 0.3
        default_role: garment
""" for i, srv in enumerate(servers)))
    env = {**os.environ, "SE_OFFLINE": "true", "SYNTHPIPE_DATA_DIR": str(tmp_path / "data"),
           "SYNTHPIPE_DATABASE_URL": pg_url, "SYNTHPIPE_STORAGE_URL": (tmp_path / "objects").as_uri(),
           "SYNTHPIPE_BROKER_URL": f"redis://127.0.0.1:{port}/0", "SYNTHPIPE_SCRAPE__SETTLE_S": "0.05",
           "SYNTHPIPE_PAIRING__AUTO_PAIR": "false", "SYNTHPIPE_CELERY__SWEEP_INTERVAL_S": "1"}
    engine = create_engine(pg_url)
    worker = None
    try:
        with servers[0], servers[1]:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.1)
            log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
            worker = subprocess.Popen([sys.executable, "-m", "common.cli", "worker", "scrape", "--pool", "threads",
                                       "--concurrency", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            def crawl(seed: int, expect: int) -> None:
                queued = subprocess.run([sys.executable, "-m", "common.cli", "crawl", "--sites", str(sites),
                                         "--batches", "2", "--seed", str(seed)], env=env, capture_output=True,
                                        text=True, timeout=120)
                assert queued.returncode == 0, queued.stderr
                deadline = time.monotonic() + 150
                while True:
                    with engine.connect() as c:
                        done = c.execute(select(func.count()).where(Job.stage == "scrape",
                                                                    Job.status == "succeeded")).scalar()
                    if done == expect:
                        return
                    assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                    time.sleep(0.3)

            crawl(0, 2)  # seed 0 samples shop-1 and shop-0: two hosts at once
            first = [srv.times() for srv in servers]
            crawl(3, 4)  # seed 3 samples shop-1 twice: one host, two crawls at once
            times = [srv.times() for srv in servers]
            with engine.connect() as c:
                windows = c.execute(select(Job.started_at, Job.finished_at).where(
                    Job.stage == "scrape", Job.key.like("scrape:%:3:%"))).all()
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        redis.kill()
        engine.dispose()
    assert first[0][0] < first[1][-1] and first[1][0] < first[0][-1], "the sites were crawled one after the other"
    (a_start, a_end), (b_start, b_end) = windows
    assert a_start < b_end and b_start < a_end, "the two crawls of one site did not run at once"
    for t in times:  # one shared throttle: the delay held even while two crawls shared a host
        assert len(t) >= 8 and min(b - a for a, b in zip(t, t[1:], strict=False)) >= 0.3 - 0.005
