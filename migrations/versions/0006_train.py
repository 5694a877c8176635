"""train stage: snapshots, adapters, and the adapter each analysis and edit used

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("edit_ids", sa.JSON(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_index("ix_snapshots_target", "snapshots", ["target"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("snapshot_sha256", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("weights_uri", sa.Text(), nullable=False),
        sa.Column("config_uri", sa.Text(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("loss_curve", sa.JSON(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["snapshot_id"], ["snapshots.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index("ix_adapters_target", "adapters", ["target"])
    op.create_index("ix_adapters_snapshot_id", "adapters", ["snapshot_id"])
    op.create_index("ix_adapters_sha256", "adapters", ["sha256"])
    for table in ("analyses", "edits"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("adapter_id", sa.Integer(), nullable=True))
            batch_op.create_index(f"ix_{table}_adapter_id", ["adapter_id"], unique=False)
            batch_op.create_foreign_key(f"fk_{table}_adapter_id", "adapters", ["adapter_id"], ["id"])


def downgrade() -> None:
    for table in ("edits", "analyses"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_adapter_id", type_="foreignkey")
            batch_op.drop_index(f"ix_{table}_adapter_id")
            batch_op.drop_column("adapter_id")
    op.drop_index("ix_adapters_sha256", table_name="adapters")
    op.drop_index("ix_adapters_snapshot_id", table_name="adapters")
    op.drop_index("ix_adapters_target", table_name="adapters")
    op.drop_table("adapters")
    op.drop_index("ix_snapshots_target", table_name="snapshots")
    op.drop_table("snapshots")
