"""Snapshots: the accepted set frozen as a stored list of edit ids with its hash.

The accepted set is every edit whose final decision is ``accepted`` (people's decision over
the AI's, from :func:`common.domain.final_decision.final_decisions`) and, of a best-of-N set, only
the selected candidate (:func:`common.domain.selection.passed_over`), minus the item sets held out
for evaluation. People-accepted edits come first, so a trainer that reads in order sees them first.
The hash covers the target, the ordered ids and the exclusions: freezing the same set twice
gives the same snapshot, and a train job names exactly the data it read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.store.rows import TRAIN_TARGETS, Edit, Snapshot


def accepted_edits(session: Session, *, exclude_item_sets: Iterable[int] = ()) -> list[tuple[int, str]]:
    """``(edit id, "human" | "ai")`` of every accepted edit outside ``exclude_item_sets``,
    people-accepted first, each group in id order. Of a best-of-N set only the selected candidate
    counts (a person's overrule, else the selection step's pick): an accepted candidate that was
    not selected is not training data."""
    from common.domain.final_decision import final_decisions
    from common.domain.selection import passed_over

    excluded = set(exclude_item_sets)
    item_set_of = dict(session.execute(select(Edit.id, Edit.item_set_id)).all())
    not_selected = set(session.scalars(passed_over()))
    accepted = [(eid, fd.source) for eid, fd in final_decisions(session).items()
                if fd.decision == "accepted" and item_set_of.get(eid) not in excluded and eid not in not_selected]
    return sorted(accepted, key=lambda pair: (pair[1] != "human", pair[0]))


def snapshot_hash(target: str, edit_ids: list[int], excluded: list[int]) -> str:
    body = json.dumps({"target": target, "edit_ids": edit_ids, "excluded_item_sets": excluded},
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def freeze(session: Session, target: str, *, exclude_item_sets: Iterable[int] = ()) -> Snapshot:
    """The snapshot of the accepted set now (an existing row when the same set was frozen before).
    An empty accepted set is an input error: there is nothing to train on."""
    if target not in TRAIN_TARGETS:
        raise InputError(f"unknown train target {target!r}; allowed: {', '.join(TRAIN_TARGETS)}")
    excluded = sorted(set(exclude_item_sets))
    pairs = accepted_edits(session, exclude_item_sets=excluded)
    if not pairs:
        raise InputError("no accepted edits to train on (score the edits, or review them, first)",
                         code="train.nothing_accepted")
    ids = [eid for eid, _ in pairs]
    sha = snapshot_hash(target, ids, excluded)
    existing = session.scalars(select(Snapshot).where(Snapshot.sha256 == sha)).first()
    if existing is not None:
        return existing
    human = sum(1 for _, source in pairs if source == "human")
    row = Snapshot(sha256=sha, target=target, edit_ids=ids, size=len(ids),
                   selection={"decisions": "final", "best_of_n": "selected candidates only",
                              "human_accepted": human, "ai_accepted": len(ids) - human, "excluded_item_sets": excluded})
    session.add(row)
    session.flush()
    return row


def get_snapshot(session: Session, snapshot_id: int) -> Snapshot:
    row = session.get(Snapshot, snapshot_id)
    if row is None:
        raise InputError(f"snapshot {snapshot_id} does not exist", code="train.no_snapshot")
    return row
