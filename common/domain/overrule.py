"""Best-of-N as people and the export see it: an analysis's candidate edits side by side, a person's
overrule of the selection, and the decision an export goes by.

The selection step writes one ``selections`` row per analysis: the winner it picked (``edit_id``),
the ranking and why. A person may make another candidate the winner (``person_edit_id``, with who,
when and a note) or clear that again; the effective winner is the person's pick where there is
one, the selection step's otherwise (:func:`common.domain.selection.effective_selection`). Export
goes by :func:`decision_with_selection`: an accepted candidate that is not the effective winner
counts as rejected, with the reason :data:`NOT_SELECTED`. A candidate is an edit with a candidate
number (``edits.candidate``) whose analysis has a ``selections`` row; every other edit (imported,
N = 1 before a selection, made before best-of-N, a flywheel's held-out edits) is untouched by all
of this.

Who overruled and when stays on the row: ``person_reviewer_id`` and ``person_at`` name the last
person who changed it, a clear included (``person_edit_id`` NULL, the reviewer set); each change
is also logged.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.domain.final_decision import final_decisions
from common.store.rows import Analysis, Decision, Edit, ItemSet, Reviewer, Selection

log = logging.getLogger(__name__)

ACCEPTED, REJECTED = "accepted", "rejected"
#: the reason an accepted candidate is exported as rejected: another candidate of its set was selected
NOT_SELECTED = "selection.not_selected"
#: the largest id a row can have (``INTEGER`` on PostgreSQL); a larger one names nothing
MAX_ID = 2**31 - 1


class UnknownSet(LookupError):
    """No selection for this analysis (none made yet, or no such analysis)."""


def winner_of(selection: Selection) -> int | None:
    """The effective winner: the person's pick where there is one, else the selection step's."""
    return selection.person_edit_id if selection.person_edit_id is not None else selection.edit_id


def decision_with_selection(final: str | None, edit_id: int, selection: Selection | None) -> str | None:
    """The decision export goes by: the final one, except that an accepted candidate which is not its
    analysis's effective winner is rejected (reason :data:`NOT_SELECTED`)."""
    if selection is not None and final == ACCEPTED and winner_of(selection) != edit_id:
        return REJECTED
    return final


def rank_of(selection: Selection, edit_id: int) -> int | None:
    """The edit's rank in the selection's ranking (1 = best), None where it is not ranked."""
    for position, entry in enumerate(selection.ranking or []):
        if isinstance(entry, dict) and entry.get("edit_id") == edit_id:
            rank = entry.get("rank")
            return int(rank) if isinstance(rank, int) and not isinstance(rank, bool) else position + 1
    return None


@dataclass
class Candidate:
    """One candidate edit of a set, as the set page shows it."""

    edit_id: int
    candidate: int | None
    backend: str
    model_id: str
    seed: int
    decision: str | None  # final: people's majority where reviewed, else the AI's
    decided_by: str  # human | ai | tie | none
    ai_decision: str | None
    reasons: list[str]
    margin: float | None
    rank: int | None
    selected: bool  # the effective winner
    auto: bool  # the selection step's pick
    person: bool  # a person's pick

    def as_dict(self) -> dict[str, Any]:
        return {"edit_id": self.edit_id, "candidate": self.candidate, "backend": self.backend,
                "model_id": self.model_id, "seed": self.seed, "decision": self.decision,
                "decided_by": self.decided_by, "ai_decision": self.ai_decision, "reasons": list(self.reasons),
                "margin": self.margin, "rank": self.rank, "selected": self.selected,
                "picked_by_selection": self.auto, "picked_by_person": self.person,
                "images": {"edited": f"/images/{self.edit_id}/edited"}}


@dataclass
class CandidateSet:
    """An analysis's candidates and its selection, the overrule included."""

    analysis_id: int
    item_set_id: int
    recipe: str
    edit_prompt: str
    rule: str
    why: str
    expected: int
    scored: int  # candidates scored when it was selected
    auto_edit_id: int | None
    person_edit_id: int | None
    person: str | None  # who last overruled (or cleared)
    person_note: str | None
    person_at: dt.datetime | None
    selected_at: dt.datetime
    garments: int
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def winner(self) -> int | None:
        return self.person_edit_id if self.person_edit_id is not None else self.auto_edit_id

    def as_dict(self) -> dict[str, Any]:
        first = self.candidates[0].edit_id if self.candidates else None
        return {
            "analysis_id": self.analysis_id, "item_set_id": self.item_set_id, "recipe": self.recipe,
            "edit_prompt": self.edit_prompt, "selected_edit_id": self.winner,
            "selection": {"edit_id": self.auto_edit_id, "rule": self.rule, "why": self.why,
                          "candidates": self.scored, "expected": self.expected,
                          "selected_at": self.selected_at.isoformat()},
            "overrule": {"edit_id": self.person_edit_id, "reviewer": self.person, "note": self.person_note,
                         "at": self.person_at.isoformat() if self.person_at else None},
            "images": {} if first is None else {"input": f"/images/{first}/input",
                                                "garments": [f"/images/{first}/garment/{i}"
                                                             for i in range(self.garments)]},
            "candidates": [c.as_dict() for c in self.candidates],
        }


def _storable(value: int) -> bool:
    return 0 <= value <= MAX_ID


def selections_for(session: Session, analysis_ids: list[int | None]) -> dict[int, Selection]:
    """``analysis id -> selection`` for those of ``analysis_ids`` that have one."""
    ids = sorted({a for a in analysis_ids if a is not None})
    if not ids:
        return {}
    return {sel.analysis_id: sel for sel in session.scalars(select(Selection).where(Selection.analysis_id.in_(ids)))}


def badges(session: Session, edit_ids: list[int]) -> dict[int, dict[str, Any]]:
    """For those of ``edit_ids`` that are candidates of a selection (others are left out): the
    analysis, the candidate number, how many candidates the analysis has, the rank and whether it is
    the effective winner. The queue shows it as a link to the set page."""
    ids = [e for e in edit_ids if _storable(e)]
    if not ids:
        return {}
    rows = session.execute(select(Edit.id, Edit.analysis_id, Edit.candidate).where(
        Edit.id.in_(ids), Edit.analysis_id.is_not(None), Edit.candidate.is_not(None))).all()
    sels = selections_for(session, [a for _, a, _ in rows])
    if not sels:
        return {}
    sizes = dict(session.execute(select(Edit.analysis_id, func.count()).where(
        Edit.analysis_id.in_(list(sels)), Edit.candidate.is_not(None)).group_by(Edit.analysis_id)).all())
    return {eid: {"analysis_id": aid, "candidate": cand, "candidates": int(sizes.get(aid, 0)),
                  "rank": rank_of(sels[aid], eid), "selected": winner_of(sels[aid]) == eid,
                  "by": "person" if sels[aid].person_edit_id is not None else "selection"}
            for eid, aid, cand in rows if aid in sels}


def candidate_set(session: Session, analysis_id: int) -> CandidateSet:
    """The candidate edits of ``analysis_id`` (by candidate number, then id) with their final decisions,
    ranks and the selection; ``UnknownSet`` where the analysis has no selection."""
    sel = session.get(Selection, analysis_id) if _storable(analysis_id) else None
    if sel is None:
        raise UnknownSet(analysis_id)
    analysis = session.get(Analysis, analysis_id)
    item = session.get(ItemSet, sel.item_set_id)
    edits = list(session.scalars(select(Edit).where(Edit.analysis_id == analysis_id, Edit.candidate.is_not(None))
                                 .order_by(Edit.candidate, Edit.id)))
    ids = [e.id for e in edits]
    finals = final_decisions(session, ids)
    ai = {d.edit_id: d for d in session.scalars(select(Decision).where(Decision.edit_id.in_(ids)))} if ids else {}
    person = session.get(Reviewer, sel.person_reviewer_id) if sel.person_reviewer_id is not None else None
    winner = winner_of(sel)
    out = CandidateSet(
        analysis_id=analysis_id, item_set_id=sel.item_set_id, recipe=item.recipe if item else "",
        edit_prompt=(analysis.edit_prompt if analysis else "") or "", rule=sel.rule, why=sel.why,
        expected=sel.expected, scored=sel.candidates, auto_edit_id=sel.edit_id, person_edit_id=sel.person_edit_id,
        person=person.name if person else None, person_note=sel.person_note, person_at=sel.person_at,
        selected_at=sel.selected_at, garments=max(0, len(item.members) - 1) if item else 0)
    for e in edits:
        final, d = finals.get(e.id), ai.get(e.id)
        out.candidates.append(Candidate(
            edit_id=e.id, candidate=e.candidate, backend=e.backend, model_id=e.model_id, seed=int(e.seed),
            decision=final.decision if final else None, decided_by=final.source if final else "none",
            ai_decision=d.decision if d else None, reasons=[str(r) for r in (d.reasons if d else [])],
            margin=d.margin if d else None, rank=rank_of(sel, e.id), selected=e.id == winner,
            auto=e.id == sel.edit_id, person=e.id == sel.person_edit_id))
    return out


def _locked(session: Session, analysis_id: int) -> Selection:
    """The selection row, locked for this transaction (two people overruling at once: one waits)."""
    sel = (session.scalar(select(Selection).where(Selection.analysis_id == analysis_id)
                          .with_for_update().execution_options(populate_existing=True))
           if _storable(analysis_id) else None)
    if sel is None:
        raise UnknownSet(analysis_id)
    return sel


def overrule_selection(session: Session, analysis_id: int, edit_id: int, reviewer_id: int, *,
             note: str | None = None) -> bool:
    """Make ``edit_id`` the selected candidate of ``analysis_id`` by a person's choice. ``UnknownSet``
    where the analysis has no selection; ``InputError`` (``selection.not_candidate``) where the edit is
    not one of its candidates. Idempotent: the same pick with the same note changes nothing (returns
    False); True when the row changed."""
    sel = _locked(session, analysis_id)
    edit = session.get(Edit, edit_id) if _storable(edit_id) else None
    if edit is None or edit.analysis_id != analysis_id or edit.candidate is None:
        raise InputError(f"edit {edit_id} is not a candidate of analysis {analysis_id}: pick one of the edits "
                         "the set page shows", code="selection.not_candidate")
    note = note or None
    if sel.person_edit_id == edit_id and sel.person_note == note:
        return False
    before = winner_of(sel)
    sel.person_edit_id, sel.person_reviewer_id, sel.person_note = edit_id, reviewer_id, note
    sel.person_at = dt.datetime.now(dt.UTC)
    session.flush()
    log.info("selection of analysis %d overruled by reviewer %d: edit %s -> %d", analysis_id, reviewer_id,
             before, edit_id)
    return True


def clear_overrule(session: Session, analysis_id: int, reviewer_id: int, *, note: str | None = None) -> bool:
    """Give ``analysis_id`` back to the selection step's pick. The row keeps who cleared it and when
    (``person_edit_id`` NULL, ``person_reviewer_id`` and ``person_at`` set). Idempotent: False where
    there was no overrule to clear."""
    sel = _locked(session, analysis_id)
    if sel.person_edit_id is None:
        return False
    before = sel.person_edit_id
    sel.person_edit_id, sel.person_reviewer_id, sel.person_note = None, reviewer_id, note or None
    sel.person_at = dt.datetime.now(dt.UTC)
    session.flush()
    log.info("overrule of analysis %d cleared by reviewer %d: edit %d -> %s", analysis_id, reviewer_id, before,
             sel.edit_id)
    return True
