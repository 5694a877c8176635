"""assets: how the role was decided, and every version of the photo the crawler saw

``role_evidence`` (JSON): which rule, detector or default gave the asset its role, with what it
saw (faces, boxes). ``versions`` (JSON list): the renditions of one photo the crawler met (URL,
size, sha256), the kept one marked, so an asset whose content was replaced by a larger version
keeps both URLs in its provenance.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role_evidence", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("versions", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assets", schema=None) as batch_op:
        batch_op.drop_column("versions")
        batch_op.drop_column("role_evidence")
