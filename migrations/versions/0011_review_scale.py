"""a review queue and stats that stay flat as the store grows

- ``review_current``: each reviewer's current decision per edit (their newest ``reviews`` row),
  kept by a trigger on ``reviews``. The queue's "not decided by me" is then one primary-key
  probe per edit, and the stats read these rows (reviewed edits only), not every review.
- ``review_edit_counts``: per reviewed edit, how many reviewers currently accept and reject it,
  kept by the same trigger. "Reviewed enough" is one probe per edit; progress, the human
  majority and Krippendorff's alpha read these rows.
- ``ix_decisions_margin`` (margin, edit_id) and ``ix_decisions_decision_margin`` (decision,
  margin, edit_id): the queue walks "least certain first" (and within one AI decision) in index
  order and stops after a page, instead of sorting every edit.
- ``ix_assets_site`` and ``ix_assets_category``: a rare site or category is found by index.
- PostgreSQL only, ``ix_decisions_reasons``: a GIN index of the reason codes (as jsonb), so a
  rare reason is found by index, and the planner knows how common each code is.

Reviews are only ever added, so the trigger fires on INSERT only. On PostgreSQL it first locks
the edit's ``review_edit_counts`` row, so reviewers deciding the same edit at once are applied
one after the other, and a row older than the one already applied (two transactions committing
out of id order) changes nothing. On SQLite (one writer at a time) plain statements do the same.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE FUNCTION review_current_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev_decision text;
    prev_id integer;
    d_acc integer;
    d_rej integer;
BEGIN
    -- one change at a time per edit: its counts row is the lock
    INSERT INTO review_edit_counts (edit_id, accepted, rejected) VALUES (NEW.edit_id, 0, 0)
        ON CONFLICT (edit_id) DO NOTHING;
    PERFORM 1 FROM review_edit_counts WHERE edit_id = NEW.edit_id FOR UPDATE;
    SELECT decision, review_id INTO prev_decision, prev_id FROM review_current
        WHERE reviewer_id = NEW.reviewer_id AND edit_id = NEW.edit_id;
    IF FOUND AND prev_id > NEW.id THEN
        RETURN NULL;  -- a newer row of this reviewer was applied already
    END IF;
    IF FOUND THEN
        UPDATE review_current SET decision = NEW.decision, tags = NEW.tags, note = NEW.note,
            review_id = NEW.id, created_at = NEW.created_at
            WHERE reviewer_id = NEW.reviewer_id AND edit_id = NEW.edit_id;
    ELSE
        INSERT INTO review_current (reviewer_id, edit_id, decision, tags, note, review_id, created_at)
            VALUES (NEW.reviewer_id, NEW.edit_id, NEW.decision, NEW.tags, NEW.note, NEW.id, NEW.created_at);
    END IF;
    d_acc := (NEW.decision = 'accepted')::integer - (coalesce(prev_decision, '') = 'accepted')::integer;
    d_rej := (NEW.decision = 'rejected')::integer - (coalesce(prev_decision, '') = 'rejected')::integer;
    IF d_acc <> 0 OR d_rej <> 0 THEN
        UPDATE review_edit_counts SET accepted = accepted + d_acc, rejected = rejected + d_rej
            WHERE edit_id = NEW.edit_id;
    END IF;
    RETURN NULL;
END $$"""

_PREV = "(SELECT decision FROM review_current WHERE reviewer_id = NEW.reviewer_id AND edit_id = NEW.edit_id)"
_SQLITE_TRIGGER = f"""
CREATE TRIGGER review_current_apply AFTER INSERT ON reviews
WHEN NOT EXISTS (SELECT 1 FROM review_current WHERE reviewer_id = NEW.reviewer_id AND edit_id = NEW.edit_id
                 AND review_id > NEW.id)
BEGIN
    INSERT INTO review_edit_counts (edit_id, accepted, rejected) VALUES (NEW.edit_id, 0, 0)
        ON CONFLICT (edit_id) DO NOTHING;
    UPDATE review_edit_counts SET
        accepted = accepted + (NEW.decision = 'accepted') - coalesce({_PREV} = 'accepted', 0),
        rejected = rejected + (NEW.decision = 'rejected') - coalesce({_PREV} = 'rejected', 0)
        WHERE edit_id = NEW.edit_id;
    INSERT INTO review_current (reviewer_id, edit_id, decision, tags, note, review_id, created_at)
        VALUES (NEW.reviewer_id, NEW.edit_id, NEW.decision, NEW.tags, NEW.note, NEW.id, NEW.created_at)
        ON CONFLICT (reviewer_id, edit_id) DO UPDATE SET decision = excluded.decision, tags = excluded.tags,
            note = excluded.note, review_id = excluded.review_id, created_at = excluded.created_at;
END"""

#: the newest row of each (reviewer, edit): what the trigger keeps, for the backfill
_LATEST = """
    SELECT r.reviewer_id, r.edit_id, r.decision, r.tags, r.note, r.id, r.created_at FROM reviews r
    JOIN (SELECT reviewer_id, edit_id, max(id) AS last_id FROM reviews GROUP BY reviewer_id, edit_id) l
      ON r.id = l.last_id"""


def upgrade() -> None:
    op.create_index("ix_decisions_margin", "decisions", ["margin", "edit_id"])
    op.create_index("ix_decisions_decision_margin", "decisions", ["decision", "margin", "edit_id"])
    op.create_index("ix_assets_site", "assets", ["site"])
    op.create_index("ix_assets_category", "assets", ["category"])
    op.create_table(
        "review_current",
        sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("reviewers.id"), primary_key=True),
        sa.Column("edit_id", sa.Integer(), sa.ForeignKey("edits.id"), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_review_current_edit", "review_current", ["edit_id"])
    op.create_table(
        "review_edit_counts",
        sa.Column("edit_id", sa.Integer(), sa.ForeignKey("edits.id"), primary_key=True),
        sa.Column("accepted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer(), nullable=False, server_default="0"),
    )
    op.execute(f"INSERT INTO review_current (reviewer_id, edit_id, decision, tags, note, review_id, created_at) "
               f"{_LATEST}")
    op.execute("INSERT INTO review_edit_counts (edit_id, accepted, rejected) "
               "SELECT edit_id, sum(CASE WHEN decision = 'accepted' THEN 1 ELSE 0 END), "
               "sum(CASE WHEN decision = 'rejected' THEN 1 ELSE 0 END) FROM review_current GROUP BY edit_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_decisions_reasons ON decisions USING gin ((reasons::jsonb) jsonb_path_ops)")
        op.execute(_PG_FUNCTION)
        op.execute("CREATE TRIGGER review_current_apply AFTER INSERT ON reviews FOR EACH ROW "
                   "EXECUTE FUNCTION review_current_apply()")
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS review_current_apply ON reviews")
        op.execute("DROP FUNCTION IF EXISTS review_current_apply()")
        op.execute("DROP INDEX IF EXISTS ix_decisions_reasons")
    else:
        op.execute("DROP TRIGGER IF EXISTS review_current_apply")
    op.drop_table("review_edit_counts")
    op.drop_index("ix_review_current_edit", table_name="review_current")
    op.drop_table("review_current")
    op.drop_index("ix_assets_category", table_name="assets")
    op.drop_index("ix_assets_site", table_name="assets")
    op.drop_index("ix_decisions_decision_margin", table_name="decisions")
    op.drop_index("ix_decisions_margin", table_name="decisions")
