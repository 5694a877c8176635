"""score stage and job operations: scores, decisions, imported edits, reason codes, job events

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=100), nullable=True))
        batch_op.create_index("ix_jobs_reason", ["reason"], unique=False)

    with op.batch_alter_table("edits", schema=None) as batch_op:
        batch_op.alter_column("job_id", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("analysis_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=False, server_default="pipeline"))
        batch_op.add_column(sa.Column("edit_prompt", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("import_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
        batch_op.create_index("ix_edits_origin", ["origin"], unique=False)
        batch_op.create_unique_constraint("uq_edits_import_key", ["import_key"])
    # pipeline edits carry their instruction too (from their analysis), so every edit has one
    edits = sa.table("edits", sa.column("analysis_id", sa.Integer), sa.column("edit_prompt", sa.Text))
    analyses = sa.table("analyses", sa.column("id", sa.Integer), sa.column("edit_prompt", sa.Text))
    op.execute(edits.update().values(edit_prompt=sa.select(analyses.c.edit_prompt)
                                     .where(analyses.c.id == edits.c.analysis_id).scalar_subquery()))

    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edit_id", sa.Integer(), nullable=False),
        sa.Column("scorer", sa.String(length=32), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("raw_text", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.String(length=100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scores_edit_id", "scores", ["edit_id"])
    op.create_index("ix_scores_job_id", "scores", ["job_id"])
    op.create_index("ux_scores_edit_scorer", "scores", ["edit_id", "scorer"], unique=True)

    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edit_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("edit_id"),
    )
    op.create_index("ix_decisions_decision", "decisions", ["decision"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=False),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("ix_decisions_decision", table_name="decisions")
    op.drop_table("decisions")
    op.drop_index("ux_scores_edit_scorer", table_name="scores")
    op.drop_index("ix_scores_job_id", table_name="scores")
    op.drop_index("ix_scores_edit_id", table_name="scores")
    op.drop_table("scores")
    # imported edits have no job or analysis: they cannot exist in the older schema
    op.execute("DELETE FROM edits WHERE origin = 'imported'")
    with op.batch_alter_table("edits", schema=None) as batch_op:
        batch_op.drop_constraint("uq_edits_import_key", type_="unique")
        batch_op.drop_index("ix_edits_origin")
        batch_op.drop_column("provenance")
        batch_op.drop_column("import_key")
        batch_op.drop_column("edit_prompt")
        batch_op.drop_column("origin")
        batch_op.alter_column("analysis_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("job_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_reason")
        batch_op.drop_column("reason")
