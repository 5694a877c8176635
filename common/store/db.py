"""Engines, sessions and schema migrations.

SQLite (local mode) runs with WAL and ``BEGIN IMMEDIATE`` so that several processes can
claim jobs from one file safely; PostgreSQL (distributed mode) uses its own locking.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from common.core.errors import ConfigError
from common.core.security import database_connect_args
from common.core.settings import JobSettings, get_settings

if TYPE_CHECKING:
    from common.core.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# Called with the ids of jobs enqueued in a transaction, after it commits (distributed mode
# sends their messages here; local mode needs nothing).
Dispatcher = Callable[[list[int]], None]


class Database:
    """One database: an engine, a session factory, and the hook run after commits."""

    def __init__(self, url: str, *, echo: bool = False, connect_args: dict[str, str] | None = None) -> None:
        self.url = url
        self.engine = _make_engine(url, echo=echo, connect_args=connect_args or {})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.dispatcher: Dispatcher | None = None

        #: the job settings (lease, attempts, backoff) of whoever uses this database; the
        #: caller that has the process's settings sets them (``get_database(..., settings=)``)
        self.jobs: JobSettings = JobSettings()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commits on success, rolls back on error, then dispatches new jobs."""
        session = self._sessions()
        session.info["jobs"] = self.jobs
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        enqueued = session.info.pop("enqueued", None)
        if enqueued and self.dispatcher is not None:
            self.dispatcher(list(enqueued))

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to ``revision`` with Alembic."""
        from alembic import command

        command.upgrade(alembic_config(self), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        command.downgrade(alembic_config(self), revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config(self)).get_current_head()
        assert head is not None
        return head

    def ensure_schema(self) -> None:
        """Local mode upgrades itself on first use; a server database must be upgraded explicitly."""
        if self.current_revision() == self.head_revision():
            return
        if self.dialect == "sqlite":
            log.info("upgrading the local database %s", self.url)
            self.upgrade()
            return
        raise ConfigError(
            f"the database at {make_url(self.url).render_as_string(hide_password=True)} is not at the "
            "current schema: run `synthpipe db upgrade`"
        )

    def dispose(self, close: bool = True) -> None:
        """Drop pooled connections; ``close=False`` in a forked child, whose inherited connections
        belong to the parent: closing them would end the parent's sessions on those sockets."""
        self.engine.dispose(close=close)


def alembic_config(db: Database):  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    cfg.attributes["engine"] = db.engine
    return cfg


def _make_engine(url: str, *, echo: bool, connect_args: dict[str, str]) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database_url (SYNTHPIPE_DATABASE_URL): cannot parse {url!r}: {exc}") from None
    if parsed.drivername == "postgresql" or parsed.drivername == "postgres":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    # libpq keywords (sslmode, sslrootcert...) in the URL's query pass straight through to psycopg
    return create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args=connect_args)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's deferred
        # BEGIN: a deferred transaction that reads, then writes, can fail with SQLITE_BUSY
        # under WAL without waiting, which would break concurrent claimers.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_DATABASES: dict[str, Database] = {}


def _tls_connect_args(url: str, settings: Settings | None) -> dict[str, str]:
    """The settings' ``database.sslmode`` and ``database.ca_file``, where the URL sets neither."""

    if settings is None:

        settings = get_settings()
    return database_connect_args(url, settings.database.sslmode, settings.database.ca_file)


def get_database(url: str | None = None, *, ensure: bool = True, settings: Settings | None = None) -> Database:
    """The process-wide ``Database`` for ``url`` (default: the settings' URL); with ``settings``,
    its job settings come from them."""
    if url is None:

        settings = settings or get_settings()
        url = settings.database_url
    assert url is not None
    db = _DATABASES.get(url)
    if db is None:
        db = _DATABASES[url] = Database(url, connect_args=_tls_connect_args(url, settings))
    if settings is not None:
        db.jobs = settings.jobs
    if ensure:
        db.ensure_schema()
    return db


def reset_databases(close: bool = True) -> None:
    """Dispose every cached engine (tests; and with ``close=False`` in a child after a fork)."""
    for db in _DATABASES.values():
        db.dispose(close=close)
    _DATABASES.clear()


def ping(db: Database) -> None:
    """Raise if the database cannot be reached."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
