"""generate stage: lineage of generated assets (source photo, adapter, prompt, seed, parameters)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset_lineage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("provenance", sa.String(length=16), nullable=False),
        sa.Column("source_asset_id", sa.Integer(), nullable=False),
        sa.Column("edit_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"]),
        sa.ForeignKeyConstraint(["source_asset_id"], ["assets.id"]),
        sa.ForeignKeyConstraint(["edit_id"], ["edits.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("asset_id"),
        sa.UniqueConstraint("edit_id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index("ix_asset_lineage_provenance", "asset_lineage", ["provenance"])
    op.create_index("ix_asset_lineage_source_asset_id", "asset_lineage", ["source_asset_id"])
    op.create_index("ix_asset_lineage_adapter_id", "asset_lineage", ["adapter_id"])


def downgrade() -> None:
    op.drop_index("ix_asset_lineage_adapter_id", table_name="asset_lineage")
    op.drop_index("ix_asset_lineage_source_asset_id", table_name="asset_lineage")
    op.drop_index("ix_asset_lineage_provenance", table_name="asset_lineage")
    op.drop_table("asset_lineage")
