"""`synthpipe flower` puts Flower's /metrics behind the same basic auth as its pages (a real
Flower process on a real Redis)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fixtures.net import can_connect, free_port, wait_for
from fixtures.redis import RedisServer


def test_flower_metrics_need_the_basic_auth_of_its_pages(redis_server: RedisServer, tmp_path: Path) -> None:
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
        assert get("/healthcheck", None) == (200, b"OK")  # probes need no password; it says nothing else
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
