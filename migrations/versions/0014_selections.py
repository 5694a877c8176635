"""best-of-N: one selection per analysed item set, and each edit's candidate number

``edits.candidate``: which of an analysis's N candidate edits this is (0 for the first; NULL for
imported edits and edits made before this revision). ``selections``: per analysis, the winner the
selection step picked (``edit_id``), the ranking and why, and a person's overrule
(``person_edit_id``), which wins over the automatic pick.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("candidate", sa.Integer(), nullable=True))
    op.create_table(
        "selections",
        sa.Column("analysis_id", sa.Integer(), sa.ForeignKey("analyses.id"), nullable=False),
        sa.Column("item_set_id", sa.Integer(), sa.ForeignKey("item_sets.id"), nullable=False),
        sa.Column("edit_id", sa.Integer(), sa.ForeignKey("edits.id"), nullable=True),
        sa.Column("ranking", sa.JSON(), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("candidates", sa.Integer(), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("person_edit_id", sa.Integer(), sa.ForeignKey("edits.id"), nullable=True),
        sa.Column("person_reviewer_id", sa.Integer(), sa.ForeignKey("reviewers.id"), nullable=True),
        sa.Column("person_note", sa.Text(), nullable=True),
        sa.Column("person_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("selected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("analysis_id"),
    )
    op.create_index("ix_selections_item_set_id", "selections", ["item_set_id"])
    op.create_index("ix_selections_edit_id", "selections", ["edit_id"])
    op.create_index("ix_selections_person_edit_id", "selections", ["person_edit_id"])
    op.create_index("ix_selections_selected_at", "selections", ["selected_at"])  # a run's summary reads its sets


def downgrade() -> None:
    op.drop_index("ix_selections_selected_at", table_name="selections")
    op.drop_index("ix_selections_person_edit_id", table_name="selections")
    op.drop_index("ix_selections_edit_id", table_name="selections")
    op.drop_index("ix_selections_item_set_id", table_name="selections")
    op.drop_table("selections")
    with op.batch_alter_table("edits", schema=None) as batch_op:
        batch_op.drop_column("candidate")
