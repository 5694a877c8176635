"""Scratch PostgreSQL databases for tests and benchmarks: made empty, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def create_scratch_database(admin_url: str, prefix: str = "synthpipe_scratch") -> str:
    """Create an empty PostgreSQL database next to ``admin_url``'s and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(admin_url: str, url: str) -> None:
    """Drop the database ``url`` names, closing any connection still open to it."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str = "synthpipe_scratch") -> Iterator[str]:
    """A fresh PostgreSQL database for the ``with`` block, dropped afterwards."""
    url = create_scratch_database(admin_url, prefix)
    try:
        yield url
    finally:
        drop_scratch_database(admin_url, url)
