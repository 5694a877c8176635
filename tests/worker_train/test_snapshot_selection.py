"""The flywheel's training data under best-of-N: a snapshot (what ``train`` and ``flywheel`` freeze)
holds a set's selected candidate only (a person's overrule over the selection step's pick), never an
accepted candidate that was passed over; edits that are no candidate keep counting as before."""

from __future__ import annotations

from fixtures.best_of_n import CANDIDATES, add_edit, make_set, score
from sqlalchemy import select

from common.store.db import Database
from common.store.rows import Analysis, Decision, Selection, utcnow
from worker_train.snapshots import accepted_edits, freeze


def test_a_snapshot_takes_each_sets_selected_candidate_only(db: Database) -> None:
    analysis_id, cands = make_set(db, 4)  # candidates 0, 2 and 3 accepted; 2 selected
    with db.session() as s:
        analysis = s.get(Analysis, analysis_id)
        assert analysis is not None
        # an imported edit and a held-out edit of the same analysis (a flywheel round's): no candidates
        imported = add_edit(s, item_set_id=analysis.item_set_id, key="import:1", metrics=CANDIDATES[0])
        held_out = add_edit(s, item_set_id=analysis.item_set_id, key="flywheel:r0:edit", metrics=CANDIDATES[0],
                            analysis_id=analysis_id)
    score(db, [*cands, imported, held_out])
    with db.session() as s:
        accepted = set(s.scalars(select(Decision.edit_id).where(Decision.decision == "accepted")))
        assert accepted == {cands[0], cands[2], cands[3], imported, held_out}
        assert s.get(Selection, analysis_id).edit_id == cands[2]  # type: ignore[union-attr]
        snap = freeze(s, "edit")
        assert snap.edit_ids == sorted([cands[2], imported, held_out])
        assert snap.selection["best_of_n"] == "selected candidates only"
        first = snap.sha256

    with db.session() as s:  # a person prefers candidate 3: it replaces candidate 2 in the training data
        row = s.get(Selection, analysis_id)
        assert row is not None
        row.person_edit_id, row.person_at = cands[3], utcnow()
    with db.session() as s:
        snap = freeze(s, "edit")
        assert snap.edit_ids == sorted([cands[3], imported, held_out]) and snap.sha256 != first
        # held out for evaluation: none of that item set is training data
        assert accepted_edits(s, exclude_item_sets=[s.get(Analysis, analysis_id).item_set_id]) == []  # type: ignore[union-attr]
