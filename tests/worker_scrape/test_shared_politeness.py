"""Politeness shared by every scrape worker through the broker's Redis (distributed mode): two
`synthpipe worker scrape` processes (as two machines) crawling one shop keep one request in flight
to it and the larger of the site's delay and robots.txt's Crawl-delay between requests, with
robots.txt fetched once for both; a killed worker's hold on a host runs out with its lease; TLS
brokers work; without a broker the slot stays in the process, as before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.net import can_connect, free_port, wait_for
from fixtures.redis import RedisServer
from fixtures.testsite import Response, SiteServer, image, page
from sqlalchemy import create_engine, select

from common.core.settings import Settings
from common.store.rows import Job
from worker_scrape.errors import PolitenessUnavailable
from worker_scrape.robots import RobotsEntry, SharedRobots, parse_robots
from worker_scrape.throttle import HostThrottle, RedisHostThrottle, shared_redis

ROOT = Path(__file__).resolve().parents[2]
SLACK = 0.005  # the server's clock reads a little after the request was sent
SITE_DELAY, CRAWL_DELAY = 0.1, 0.35  # robots.txt's Crawl-delay is the larger: it must win


def _record_spans(server: SiteServer) -> list[tuple[float, float, str, str]]:
    """Make ``server`` log (start, end, path, User-Agent) of every request: from reading the request
    line to the last byte written, so two requests in flight at once show as overlapping spans."""
    spans: list[tuple[float, float, str, str]] = []
    lock = threading.Lock()
    handler = server.httpd.RequestHandlerClass

    class Timed(handler):  # type: ignore[misc,valid-type]
        def do_GET(self) -> None:  # noqa: N802
            start = time.monotonic()
            try:
                super().do_GET()
            finally:
                with lock:
                    spans.append((start, time.monotonic(), self.path, self.headers.get("User-Agent", "")))

    server.httpd.RequestHandlerClass = Timed
    return spans


def _wait_ready(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while b" ready." not in (log.read_bytes() if log.exists() else b""):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker did not start: " + log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.browser
@pytest.mark.postgres
def test_two_worker_processes_share_one_slot_and_one_robots_fetch_per_host(
        pg_url: str, redis_server: RedisServer, tmp_path: Path) -> None:
    from common.store.db import Database

    Database(pg_url).upgrade()
    shop = SiteServer("127.0.0.41")
    spans = _record_spans(shop)
    shop.routes["/robots.txt"] = Response(200, f"User-agent: *\nAllow: /\nCrawl-delay: {CRAWL_DELAY}\n".encode(),
                                          "text/plain")
    shop.routes["/"] = page("".join(f'<a href="/p{i}">p</a>' for i in range(4)))
    for i in range(4):  # each answer takes a while, so two requests in flight at once would overlap
        shop.routes[f"/p{i}"] = Response(200, page(f'<img src="/img/{i}.png">').body, delay_s=0.05)
        shop.routes[f"/img/{i}.png"] = Response(200, image(size=(96, 96), noise=True).body, "image/png",
                                                delay_s=0.05)
    sites = tmp_path / "sites.yaml"
    sites.write_text(f"""categories:
  - name: shops
    sites:
      - name: shop
        start_urls: ["{shop.url('/')}"]
        delay_s: {SITE_DELAY}
        default_role: garment
""")
    base_env = {**os.environ, "SE_OFFLINE": "true", "SYNTHPIPE_DATABASE_URL": pg_url,
                "SYNTHPIPE_STORAGE_URL": (tmp_path / "objects").as_uri(), "SYNTHPIPE_BROKER_URL": redis_server.url,
                "SYNTHPIPE_SCRAPE__SETTLE_S": "0.05", "SYNTHPIPE_SCRAPE__SCROLL_STEPS": "0",
                "SYNTHPIPE_PAIRING__AUTO_PAIR": "false", "SYNTHPIPE_CELERY__SWEEP_INTERVAL_S": "1"}
    agents = ["machine-a-bot/1.0", "machine-b-bot/1.0"]  # each worker's own, to tell their requests apart
    engine = create_engine(pg_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with shop:
            for name, agent in zip("ab", agents, strict=True):
                env = {**base_env, "SYNTHPIPE_DATA_DIR": str(tmp_path / f"data-{name}"),
                       "SYNTHPIPE_SCRAPE__USER_AGENT": agent}
                log = tmp_path / f"worker-{name}.log"
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "common.cli", "worker", "scrape"], cwd=ROOT, env=env,
                    stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
            for name, proc in zip("ab", workers, strict=True):
                _wait_ready(tmp_path / f"worker-{name}.log", proc)
            queued = subprocess.run([sys.executable, "-m", "common.cli", "crawl", "--sites", str(sites),
                                     "--batches", "2", "--seed", "0"], cwd=ROOT, env=base_env,
                                    capture_output=True, text=True, timeout=120)
            assert queued.returncode == 0, queued.stderr
            deadline = time.monotonic() + 180

            def finished() -> list[Any]:
                with engine.connect() as c:
                    return list(c.execute(select(Job.status, Job.worker, Job.started_at, Job.finished_at,
                                                 Job.error_message).where(Job.stage == "scrape")).all())

            while not (jobs := finished()) or any(j.status not in ("succeeded", "failed") for j in jobs):
                assert time.monotonic() < deadline, [(tmp_path / f"worker-{n}.log").read_text()[-2000:] for n in "ab"]
                time.sleep(0.3)
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        engine.dispose()
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error_message for j in jobs]
    # as two machines would: each worker crawled the shop once, both at the same time
    (a, b) = jobs
    assert a.worker != b.worker
    assert a.started_at < b.finished_at and b.started_at < a.finished_at, "the two crawls did not run at once"
    paths = [s[2] for s in spans]
    assert all(paths.count(p) == 2 for p in ["/"] + [f"/p{i}" for i in range(4)] + [f"/img/{i}.png" for i in range(4)])
    assert {s[3] for s in spans} == set(agents)
    ordered = sorted(spans)
    switches = sum(x[3] != y[3] for x, y in zip(ordered, ordered[1:], strict=False))
    assert switches >= 4, "the workers' requests did not interleave"
    # one request in flight at a time, and the Crawl-delay (over the site's delay) from the end of
    # each request to the start of the next, whichever worker sent them
    for (_s1, end, path1, ua1), (start, _e2, path2, ua2) in zip(ordered, ordered[1:], strict=False):
        assert start >= end, f"{path1} ({ua1}) and {path2} ({ua2}) were in flight at once"
        assert start - end >= CRAWL_DELAY - SLACK, f"{path1} ({ua1}) -> {path2} ({ua2}): {start - end:.3f}s"
    assert paths.count("/robots.txt") == 1  # the shared robots.txt cache: one fetch for both workers


_HOLDER = """
import sys, time
from worker_scrape.throttle import RedisHostThrottle, shared_redis
throttle = RedisHostThrottle(shared_redis(sys.argv[1]), lease_s=float(sys.argv[2]))
with throttle.slot("shop.test:80", 0.0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_workers_lease_runs_out_and_another_process_proceeds(redis_server: RedisServer) -> None:
    lease_s = 1.0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, redis_server.url, str(lease_s)], cwd=ROOT,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        waiter = RedisHostThrottle(shared_redis(redis_server.url), lease_s=lease_s)
        got: list[float] = []

        def take() -> None:
            with waiter.slot("shop.test:80", 0.0):
                got.append(time.monotonic())

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        thread.join(3 * lease_s)  # the live holder renews its lease: three leases long, still its host
        assert not got, "the slot was taken while its holder was alive"
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        thread.join(lease_s + 5)
        assert got, "the dead holder's lease never ran out"
        assert killed_at < got[0] <= killed_at + lease_s + 1.0
        waiter.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_without_a_broker_the_slot_and_robots_cache_stay_in_the_process(redis_server: RedisServer) -> None:
    from worker_scrape.service import _ResidentCrawler

    resident = _ResidentCrawler()
    try:
        local = resident.get(Settings(broker_url=None))
        assert type(local.throttle) is HostThrottle and local.robots.shared is None and local.redis is None
        shared = resident.get(Settings(broker_url=redis_server.url))  # a new broker: a new crawler
        assert shared is not local and isinstance(shared.throttle, RedisHostThrottle)
        assert isinstance(shared.robots.shared, SharedRobots)
    finally:
        resident.close()
    assert shared_redis("amqp://guest@127.0.0.1//") is None  # no Redis to share: each process its own slot


def test_a_robots_file_fetched_by_one_worker_serves_the_others_until_it_expires(redis_server: RedisServer) -> None:
    from worker_scrape.robots import RobotsCache

    def worker_cache() -> RobotsCache:  # each with its own client and in-process entries, as on two machines
        client = shared_redis(redis_server.url)
        assert client is not None
        return RobotsCache("bot", max_age_s=1.0, throttle=RedisHostThrottle(client), shared=SharedRobots(client))

    with SiteServer("127.0.0.42") as server:
        server.routes["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /private\n", "text/plain")
        a, b = worker_cache(), worker_cache()
        url = server.url("/private/x")
        assert not a.allowed(url) and not b.allowed(url) and b.allowed(server.url("/shop"))
        assert server.paths() == ["/robots.txt"]  # b used a's fetch
        time.sleep(1.1)  # past max_age_s, for both: b's copy keeps a's age
        assert not b.allowed(url) and not a.allowed(url)
        assert server.paths() == ["/robots.txt", "/robots.txt"]  # fetched again once, shared again


PASSWORD, ACL_USER, ACL_PASSWORD = "politeness-tls-3c1e", "crawler", "politeness-acl-77b0"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """redis-server speaking only TLS, with a password and an ACL user, on 127.0.0.1."""
    certs = tmp_path / "certs"
    subprocess.run([str(ROOT / "scripts" / "make-certs.sh"), str(certs)], check=True, capture_output=True,
                   timeout=60)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
         "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: can_connect(port), 10, "TLS redis did not start")
        yield port, certs / "ca.crt"
    finally:
        proc.kill()
        proc.wait()


def test_a_tls_broker_with_an_acl_user_shares_the_slot_and_robots(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0"
    throttle = RedisHostThrottle(shared_redis(url, ca))  # type: ignore[arg-type]
    with throttle.slot("shop.test:80", 0.0):
        pass
    assert throttle.last_request_end("shop.test:80") is not None
    robots = SharedRobots(shared_redis(url, ca))  # type: ignore[arg-type]
    robots.put("http://shop.test:80", parse_robots(b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n"), 60)
    robots.put("http://down.test:80", RobotsEntry(status="unreachable", why="HTTP 503"), 60)
    entry, down = robots.get("http://shop.test:80"), robots.get("http://down.test:80")
    assert entry is not None and entry.status == "ok" and entry.crawl_delay("bot") == 2.0
    assert not entry.can_fetch("bot", "http://shop.test/private/x") and entry.can_fetch("bot", "http://shop.test/")
    assert down is not None and (down.status, down.why, down.allow_all) == ("unreachable", "HTTP 503", False)
    # the broker's certificate is checked: without its CA the connection is refused, as Celery's would be
    with pytest.raises(PolitenessUnavailable), RedisHostThrottle(shared_redis(url)).slot("shop.test:80", 0.0):  # type: ignore[arg-type]
        pass
