"""claims, sweeps and status that stay flat as the store grows

- ``ix_jobs_queued``: a partial index of queued jobs by stage and id. A claim walks it in id
  order and touches queued jobs only, so its cost no longer grows with the finished history.
- ``ix_jobs_running_lease``: a partial index of running jobs by stage and lease, for the sweep.
- ``ix_jobs_with_reason``: a partial index of the jobs that carry a reason code, for the metrics
  scrape's failures by reason (an index-only scan of those jobs, not of every job).
- ``job_counts``: jobs per stage and status, kept by triggers, so ``status`` and the metrics
  scrape read a handful of rows instead of counting every job. On PostgreSQL statement-level
  triggers append one aggregated row per (stage, status) to ``job_count_deltas`` (inserts only:
  no lock shared between claimers) and readers fold the deltas into ``job_counts`` now and then;
  on SQLite (one writer at a time) row-level triggers update ``job_counts`` directly.

Revision ID: 0010
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

_PG_FUNCTIONS = {
    "insert": """
        INSERT INTO job_count_deltas (stage, status, delta)
        SELECT stage, status, count(*) FROM new_rows GROUP BY stage, status""",
    "delete": """
        INSERT INTO job_count_deltas (stage, status, delta)
        SELECT stage, status, -count(*) FROM old_rows GROUP BY stage, status""",
    "update": """
        INSERT INTO job_count_deltas (stage, status, delta)
        SELECT stage, status, sum(d) FROM (
            SELECT stage, status, 1 AS d FROM new_rows
            UNION ALL SELECT stage, status, -1 AS d FROM old_rows) t
        GROUP BY stage, status HAVING sum(d) <> 0""",
}
_PG_REFERENCING = {"insert": "NEW TABLE AS new_rows", "delete": "OLD TABLE AS old_rows",
                   "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows"}

_SQLITE_TRIGGERS = {
    "insert": """
        CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO job_counts (stage, status, n) VALUES (NEW.stage, NEW.status, 1)
            ON CONFLICT (stage, status) DO UPDATE SET n = n + 1;
        END""",
    "delete": """
        CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
            UPDATE job_counts SET n = n - 1 WHERE stage = OLD.stage AND status = OLD.status;
        END""",
    "update": """
        CREATE TRIGGER job_counts_update AFTER UPDATE OF stage, status ON jobs
        WHEN OLD.stage IS NOT NEW.stage OR OLD.status IS NOT NEW.status BEGIN
            UPDATE job_counts SET n = n - 1 WHERE stage = OLD.stage AND status = OLD.status;
            INSERT INTO job_counts (stage, status, n) VALUES (NEW.stage, NEW.status, 1)
            ON CONFLICT (stage, status) DO UPDATE SET n = n + 1;
        END""",
}


def upgrade() -> None:
    op.create_index("ix_jobs_queued", "jobs", ["stage", "id"], postgresql_where=sa.text("status = 'queued'"),
                    sqlite_where=sa.text("status = 'queued'"))
    op.create_index("ix_jobs_running_lease", "jobs", ["stage", "lease_expires_at"],
                    postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'"))
    op.create_index("ix_jobs_with_reason", "jobs", ["stage", "status", "reason"],
                    postgresql_where=sa.text("reason IS NOT NULL"), sqlite_where=sa.text("reason IS NOT NULL"))
    op.create_table(
        "job_counts",
        sa.Column("stage", sa.String(16), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO job_counts (stage, status, n) SELECT stage, status, count(*) FROM jobs "
               "GROUP BY stage, status")
    if op.get_bind().dialect.name == "postgresql":
        op.create_table(
            "job_count_deltas",
            sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
            sa.Column("stage", sa.String(16), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("delta", sa.BigInteger(), nullable=False),
        )
        for event, body in _PG_FUNCTIONS.items():
            op.execute(f"CREATE FUNCTION job_counts_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                       f"BEGIN {body}; RETURN NULL; END $$")
            op.execute(f"CREATE TRIGGER job_counts_{event} AFTER {event.upper()} ON jobs "
                       f"REFERENCING {_PG_REFERENCING[event]} FOR EACH STATEMENT "
                       f"EXECUTE FUNCTION job_counts_{event}()")
    else:
        for sql in _SQLITE_TRIGGERS.values():
            op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for event in _PG_FUNCTIONS:
            op.execute(f"DROP TRIGGER IF EXISTS job_counts_{event} ON jobs")
            op.execute(f"DROP FUNCTION IF EXISTS job_counts_{event}()")
        op.drop_table("job_count_deltas")
    else:
        for event in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS job_counts_{event}")
    op.drop_table("job_counts")
    op.drop_index("ix_jobs_with_reason", table_name="jobs")
    op.drop_index("ix_jobs_running_lease", table_name="jobs")
    op.drop_index("ix_jobs_queued", table_name="jobs")
