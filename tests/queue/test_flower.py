"""`synthpipe flower`: a real Flower process on a real Redis, its pages, API and /metrics behind
one basic auth, and no start without it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fixtures.net import can_connect, free_port, wait_for
from fixtures.redis import RedisServer

pytestmark = pytest.mark.redis


def test_flower_behind_basic_auth_shows_the_queues_and_metrics(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SYNTHPIPE_DATA_DIR": str(tmp_path), "SYNTHPIPE_BROKER_URL": redis_server.url,
           "SYNTHPIPE_FLOWER__BASIC_AUTH": "ops:s3cret"}
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "flower", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: can_connect(port), 60, "flower to listen")

        def get(path: str, credentials: bytes | None) -> tuple[int, bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
            if credentials is not None:
                req.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, b""

        assert get("/metrics", None)[0] == 401
        assert get("/metrics", b"ops:wrong")[0] == 401
        status, body = get("/metrics", b"ops:s3cret")
        assert status == 200 and b"# HELP flower_" in body
        assert get("/", None)[0] == 401  # the pages as before
        assert get("/", b"ops:s3cret")[0] == 200
        status, body = get("/api/queues/length", b"ops:s3cret")
        assert status == 200
        names = {q["name"] for q in json.loads(body)["active_queues"]}
        assert {"scrape", "vl", "edit"} <= names
        assert get("/healthcheck", None) == (200, b"OK")  # probes need no password; it says nothing else
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_flower_refuses_to_start_without_auth(tmp_path: Path) -> None:
    env = {**os.environ, "SYNTHPIPE_DATA_DIR": str(tmp_path), "SYNTHPIPE_BROKER_URL": "redis://127.0.0.1:1/0"}
    env.pop("SYNTHPIPE_FLOWER__BASIC_AUTH", None)
    out = subprocess.run([sys.executable, "-m", "common.cli", "flower"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "SYNTHPIPE_FLOWER__BASIC_AUTH" in out.stderr
