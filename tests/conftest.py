"""Shared fixtures: isolated settings, SQLite and real PostgreSQL databases, test images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("SYNTHPIPE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SYNTHPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _clear_synthpipe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SYNTHPIPE_") and not key.startswith("SYNTHPIPE_TEST_"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own data dir and fresh settings/engine caches."""
    from common.core.settings import reset_settings
    from common.store.db import reset_databases

    _clear_synthpipe_env(monkeypatch)
    data = tmp_path / "data"
    monkeypatch.setenv("SYNTHPIPE_DATA_DIR", str(data))
    monkeypatch.setenv("SYNTHPIPE_CONFIG", str(tmp_path / "synthpipe.toml"))
    reset_settings()
    reset_databases()
    yield data
    reset_databases()
    reset_settings()


def _create_pg_database() -> str:
    from common.devkit.scratch import create_scratch_database

    return create_scratch_database(PG_ADMIN_URL, "synthpipe_test")


def _drop_pg_database(url: str) -> None:
    from common.devkit.scratch import drop_scratch_database

    drop_scratch_database(PG_ADMIN_URL, url)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on 127.0.0.1, dropped afterwards."""
    url = _create_pg_database()
    yield url
    from common.store.db import reset_databases

    reset_databases()
    _drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite (local mode) and on PostgreSQL (distributed mode)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = _create_pg_database()
        yield url
        from common.store.db import reset_databases

        reset_databases()
        _drop_pg_database(url)


@pytest.fixture
def db(db_url: str, monkeypatch: pytest.MonkeyPatch):  # -> Database, upgraded to head
    from common.core.settings import reset_settings
    from common.store.db import get_database

    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", db_url)
    reset_settings()
    database = get_database(db_url, ensure=False)
    database.upgrade()
    return database


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_vl(tiny_dir: Path) -> Path:
    """A tiny random-weight Qwen2.5-VL checkpoint, built once per test session."""
    from common.devkit.tinymodels import build_one

    return build_one("vl", tiny_dir)


@pytest.fixture(scope="session")
def tiny_models(tiny_dir: Path) -> dict[str, Path]:
    """Tiny random-weight checkpoints of every backend, built once per test session."""
    from common.devkit.tinymodels import build_all

    return build_all(tiny_dir)


def use_tiny_models(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> None:
    """Point the settings at tiny checkpoints with settings that suit them on a CPU."""
    from common.core.settings import reset_settings
    from common.devkit.tinymodels import settings_for

    for key, value in settings_for(models).items():
        monkeypatch.setenv(key, value)
    reset_settings()
