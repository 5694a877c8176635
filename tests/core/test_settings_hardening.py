"""The database URL at start-up: an unusable one (a port out of range, an unknown driver) is one
line naming SYNTHPIPE_DATABASE_URL and exit 2, and the remote-database TLS rule is applied to
the server libpq will really reach (``hostaddr``, ``service``, ``PGHOST``/``PGHOSTADDR``/
``PGSERVICE``), decided without a lookup or a connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.core import security
from common.core.errors import ConfigError
from common.core.settings import load_settings

LOCAL = "postgresql+psycopg://synthpipe:pw@127.0.0.1:5432/synthpipe"
NO_HOST = "postgresql+psycopg://synthpipe:pw@/synthpipe"


@pytest.mark.parametrize(("url", "env", "sslmode", "ok"), [
    (LOCAL, {}, None, True),
    (LOCAL + "?hostaddr=10.0.0.5", {}, None, False),  # the address wins over the name
    (LOCAL + "?hostaddr=10.0.0.5", {}, "require", True),
    ("postgresql+psycopg://u@db.example/x?hostaddr=127.0.0.1", {}, None, True),  # name for TLS only
    (LOCAL + "?hostaddr=127.0.0.1,10.0.0.5", {}, None, False),
    ("postgresql+psycopg://u@localhost/x?host=127.0.0.1,db.example", {}, None, False),
    (LOCAL, {"PGHOSTADDR": "10.0.0.5"}, None, False),  # libpq reads it whenever the URL has no hostaddr
    (LOCAL + "?hostaddr=127.0.0.1", {"PGHOSTADDR": "10.0.0.5"}, None, True),
    (NO_HOST, {"PGHOST": "db.example"}, None, False),
    (NO_HOST, {"PGHOST": "/var/run/postgresql"}, None, True),
    (LOCAL, {"PGHOST": "db.example"}, None, True),  # the URL's host wins over PGHOST
    (LOCAL + "?service=prod", {}, None, False),  # a service file we do not read: maybe anywhere
    (LOCAL + "?service=prod", {}, "require", False),  # ... so only a verified certificate will do
    (LOCAL + "?service=prod&sslmode=verify-full", {}, None, True),
    (LOCAL, {"PGSERVICE": "prod"}, None, False),
    (LOCAL, {"PGSERVICE": "prod"}, "verify-ca", True),
])
def test_the_tls_rule_judges_the_server_libpq_will_reach(url: str, env: dict[str, str], sslmode: str | None,
                                                        ok: bool) -> None:
    problem = security.database_problem(url, sslmode, env)
    assert (problem is None) is ok, problem
    if problem:
        assert "SYNTHPIPE_DATABASE_URL" in problem and "pw@" not in problem


def test_settings_read_the_libpq_variables_and_the_waiver_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", LOCAL)
    monkeypatch.setenv("PGHOSTADDR", "10.0.0.5")
    with pytest.raises(ConfigError, match="libpq connects to 10.0.0.5"):
        load_settings()
    assert load_settings(database={"allow_insecure": True}).database_url == LOCAL
    monkeypatch.delenv("PGHOSTADDR")
    monkeypatch.setenv("PGSERVICE", "prod")
    with pytest.raises(ConfigError, match="service 'prod'"):
        load_settings()
    assert load_settings(database={"sslmode": "verify-full"}).database.sslmode == "verify-full"


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://127.0.0.1:99999999/x", "port 99999999"),
    ("postgresql://h:99999999/x", "port 99999999"),
    ("postgresql+psycopg://u:pw@127.0.0.1/x?port=0", "port 0"),
    ("postgresql://u:pw@h:abc/x", "is not a database URL"),
    ("foo://x", "no SQLAlchemy dialect 'foo'"),
    ("foo:///x", "no SQLAlchemy dialect 'foo'"),
])
def test_an_unusable_database_url_is_named_whatever_the_waiver(url: str, says: str) -> None:
    problem = security.database_url_problem(url)
    assert problem is not None and says in problem and "SYNTHPIPE_DATABASE_URL" in problem
    assert ":pw@" not in problem
    with pytest.raises(ConfigError, match="SYNTHPIPE_DATABASE_URL") as info:
        load_settings(database_url=url, database={"allow_insecure": True})
    assert says in str(info.value)


def test_usable_database_urls_pass() -> None:
    for url in ("sqlite:////tmp/x.db", LOCAL, LOCAL + "?port=5433", "postgresql+psycopg://u@[::1]:5432/x"):
        assert security.database_url_problem(url) is None, url


def _status(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not (k.startswith("SYNTHPIPE_") and not k.startswith("SYNTHPIPE_TEST_")) and not k.startswith("PG")}
    full.update(env, SYNTHPIPE_DATA_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "common.cli", "status"], env=full, capture_output=True, text=True,
                          timeout=120)


# 0.0.0.0 is this machine to the kernel but not a loopback address to the rule: nothing leaves it
# even where the rule would have let the connection through
@pytest.mark.parametrize(("env", "says"), [
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres?hostaddr=0.0.0.0"},
     "libpq connects to 0.0.0.0"),
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres", "PGHOSTADDR": "0.0.0.0"},
     "libpq connects to 0.0.0.0"),
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@/postgres", "PGHOST": "0.0.0.0"},
     "libpq connects to 0.0.0.0"),
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres",
      "PGSERVICE": "synthpipe-prod"}, "service 'synthpipe-prod'"),
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres?service=prod"},
     "service 'prod'"),
    ({"SYNTHPIPE_DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:99999999/postgres"},
     "port 99999999 is not a port"),
    ({"SYNTHPIPE_DATABASE_URL": "foo://localhost/x"}, "no SQLAlchemy dialect 'foo'"),
])
def test_status_refuses_with_one_line_naming_the_setting(tmp_path: Path, env: dict[str, str], says: str) -> None:
    out = _status(tmp_path, env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "SYNTHPIPE_DATABASE_URL" in lines[0] and says in lines[0], lines[0]
    assert ":pw@" not in out.stderr
