"""A broker or database on another machine without TLS (or, for the broker, a password) is
refused at start-up, from its URL alone: no name is looked up and nothing is connected to."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.core import security
from common.core.errors import ConfigError
from common.core.settings import load_settings


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LOCALHOST", True), ("localhost.", True), ("127.0.0.1", True),
    ("127.255.3.4", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True), (None, True),
    ("", True), ("broker.example", False), ("localhost.example", False), ("127.0.0.1.example", False),
    ("127.1", False), ("0.0.0.0", False), ("10.0.0.5", False), ("::", False), ("fe80::1%eth0", False),
])
def test_loopback_is_decided_from_the_written_host(host: str | None, loopback: bool) -> None:
    assert security.is_loopback_host(host) is loopback


@pytest.mark.parametrize(("url", "reason"), [
    ("redis://broker.example:6379/0", "is not TLS"),
    ("redis://:s3cret@broker.example:6379/0", "is not TLS"),
    ("rediss://broker.example:6379/0", "has no password"),
    ("rediss://worker@broker.example:6379/0", "has no password"),
    ("rediss://:s3cret@broker.example:6379/0?ssl_cert_reqs=none", "turns certificate checks off"),
    ("rediss://:s3cret@127.0.0.1:6379/0;redis://broker.example:6379/0", "is not TLS"),
    ("amqp://guest:guest@broker.example//", "is not TLS"),
    ("sqs://broker.example", "cannot be checked for TLS"),
])
def test_unsafe_remote_brokers_are_named_with_the_reason(url: str, reason: str) -> None:
    problem = security.broker_problem(url)
    assert problem is not None and reason in problem
    assert "s3cret" not in problem  # a password never reaches a message
    assert "SYNTHPIPE_CELERY__ALLOW_INSECURE_BROKER" in problem


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "redis://localhost/0", "redis://[::1]:6379/0", "redis://", "memory://",
    "redis+socket:///run/redis.sock", "rediss://:s3cret@broker.example:6380/0",
    "rediss://worker:s3cret@broker.example:6380/0?ssl_cert_reqs=required", "amqps://u:p@broker.example//",
])
def test_loopback_and_authenticated_tls_brokers_pass(url: str) -> None:
    assert security.broker_problem(url) is None


@pytest.mark.parametrize(("url", "sslmode", "ok"), [
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe", None, False),
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe?sslmode=prefer", None, False),
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe?sslmode=require", None, True),
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe?sslmode=verify-full", None, True),
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe", "verify-full", True),
    ("postgresql+psycopg://synthpipe:pw@db.example/synthpipe?sslmode=disable", "verify-full", False),
    ("postgresql+psycopg://synthpipe@127.0.0.1:5432/synthpipe", None, True),
    ("postgresql+psycopg://synthpipe@/synthpipe?host=/var/run/postgresql", None, True),
    ("postgresql+psycopg://synthpipe@localhost/synthpipe?host=127.0.0.1&host=db.example", None, False),
    ("mysql+pymysql://u:pw@db.example/x", None, False),
    ("sqlite:////tmp/jobs.db", None, True),
])
def test_remote_databases_need_tls(url: str, sslmode: str | None, ok: bool) -> None:
    problem = security.database_problem(url, sslmode)
    assert (problem is None) is ok, problem
    if problem:
        assert "pw@" not in problem and "SYNTHPIPE_DATABASE__ALLOW_INSECURE" in problem


def test_settings_refuse_before_any_lookup_or_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is made from the URL alone: a lookup or a connection attempt would be seen."""
    calls: list[str] = []

    def lookup(*args: object, **kwargs: object) -> list[object]:
        calls.append(f"getaddrinfo{args[:2]}")
        raise OSError("no lookups in this test")

    def connect(self: socket.socket, address: object) -> None:
        calls.append(f"connect{address}")
        raise OSError("no connections in this test")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", "redis://broker.example:6379/0")
    with pytest.raises(ConfigError, match="not TLS"):
        load_settings()
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", "rediss://:pw@broker.example:6380/0")
    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", "postgresql+psycopg://synthpipe:pw@db.example/synthpipe")
    with pytest.raises(ConfigError, match="sslmode is not set"):
        load_settings()
    assert calls == []


def test_the_waivers_let_a_trusted_network_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", "redis://broker.example:6379/0")
    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", "postgresql+psycopg://synthpipe:pw@db.example/synthpipe")
    with pytest.raises(ConfigError):
        load_settings(celery={"allow_insecure_broker": True})
    settings = load_settings(celery={"allow_insecure_broker": True}, database={"allow_insecure": True})
    assert settings.broker_url == "redis://broker.example:6379/0"


def test_a_ca_file_must_exist_and_go_with_a_tls_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", "rediss://:pw@127.0.0.1:6380/0")
    monkeypatch.setenv("SYNTHPIPE_CELERY__BROKER_CA_FILE", str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="celery.broker_ca_file"):
        load_settings()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SYNTHPIPE_CELERY__BROKER_CA_FILE", str(ca))
    assert load_settings().celery.broker_ca_file == ca
    monkeypatch.setenv("SYNTHPIPE_BROKER_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="not a TLS URL"):
        load_settings()


def test_celery_checks_the_broker_certificate_against_the_ca_file(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import ssl

    from common.queue.app import celery_config

    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conf = celery_config(load_settings(broker_url="rediss://:pw@127.0.0.1:6380/0", celery={"broker_ca_file": ca}))
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert celery_config(load_settings(broker_url="redis://127.0.0.1:6379/0"))["broker_use_ssl"] is False


def test_database_tls_settings_fill_in_what_the_url_leaves_out(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    url = "postgresql+psycopg://synthpipe@db.example/synthpipe"
    assert security.database_connect_args(url, "verify-full", ca) == {"sslmode": "verify-full",
                                                                       "sslrootcert": str(ca)}
    assert security.database_connect_args(url + "?sslmode=require", "verify-full", None) == {}
    assert security.database_connect_args("sqlite:////tmp/x.db", "verify-full", ca) == {}


@pytest.mark.parametrize(("command", "env"), [
    (["worker", "vl"], {"SYNTHPIPE_BROKER_URL": "redis://broker.example:6379/0"}),
    (["worker", "edit"], {"SYNTHPIPE_BROKER_URL": "rediss://broker.example:6380/0"}),
    (["pair", "--recipe", "tryon"], {"SYNTHPIPE_BROKER_URL": "redis://:pw@broker.example:6379/0"}),
    (["flower"], {"SYNTHPIPE_BROKER_URL": "redis://:pw@broker.example:6379/0",
                  "SYNTHPIPE_FLOWER__BASIC_AUTH": "ops:secret"}),
    (["worker", "vl"], {"SYNTHPIPE_BROKER_URL": "rediss://:pw@127.0.0.1:6380/0",
                        "SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://synthpipe:pw@db.example/synthpipe"}),
])
def test_workers_and_producers_refuse_to_start_with_one_line(command: list[str], env: dict[str, str],
                                                            tmp_path: Path) -> None:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_") or k.startswith("SYNTHPIPE_TEST_")}
    full.update(env, SYNTHPIPE_DATA_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "common.cli", *command], env=full, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not on this machine" in lines[0], out.stderr
    assert ":pw@" not in out.stderr
