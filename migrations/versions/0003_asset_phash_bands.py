"""indexed bands of the perceptual hash, so near-duplicate search stops scanning every asset

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The same cut as common.store.rows.PHASH_BANDS, frozen here: a migration must not change when
# application code does.
BANDS = (13, 13, 13, 13, 12)


def _bands(phash: str) -> list[int]:
    value, out, shift = int(phash, 16), [], 64
    for width in BANDS:
        shift -= width
        out.append((value >> shift) & ((1 << width) - 1))
    return out


def upgrade() -> None:
    with op.batch_alter_table("assets", schema=None) as batch_op:
        for i in range(len(BANDS)):
            batch_op.add_column(sa.Column(f"phash_b{i}", sa.Integer(), nullable=True))
    assets = sa.table("assets", sa.column("id", sa.Integer), sa.column("phash", sa.String),
                      *(sa.column(f"phash_b{i}", sa.Integer) for i in range(len(BANDS))))
    conn = op.get_bind()
    rows = conn.execute(sa.select(assets.c.id, assets.c.phash)).all()
    if rows:
        conn.execute(
            assets.update().where(assets.c.id == sa.bindparam("_id")),
            [{"_id": row_id, **{f"phash_b{i}": b for i, b in enumerate(_bands(phash))}} for row_id, phash in rows],
        )
    for i in range(len(BANDS)):
        op.create_index(f"ix_assets_phash_b{i}", "assets", [f"phash_b{i}"])


def downgrade() -> None:
    for i in range(len(BANDS)):
        op.drop_index(f"ix_assets_phash_b{i}", table_name="assets")
    with op.batch_alter_table("assets", schema=None) as batch_op:
        for i in range(len(BANDS)):
            batch_op.drop_column(f"phash_b{i}")
