"""token totals per stage and model: ``model_usage``

One row per (stage, model id) with the requests, prompt tokens and completion tokens its jobs
spent, added when each job is recorded (``common.store.usage``). ``status`` and the metrics read
these few rows instead of summing every analysis and score.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_usage",
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stage", "model"),
    )


def downgrade() -> None:
    op.drop_table("model_usage")
