"""The final decision on each edit: people's where they decided, the AI's otherwise.

People decide by majority of their current decisions; a tie stays unresolved (``decision``
None, ``source`` "tie") until another reviewer breaks it. Export and training read this.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.domain.review_queue import ACCEPTED, REJECTED, current_decisions
from common.store.rows import Decision, Edit, Reviewer


@dataclass(frozen=True)
class FinalDecision:
    edit_id: int
    decision: str | None  # accepted | rejected | None (unresolved tie, or neither AI nor people)
    source: str  # "human", "ai", "tie" or "none"
    ai_decision: str | None = None
    review_decision: str | None = None  # the people's majority (None: not reviewed, or a tie)
    review_tags: list[str] = field(default_factory=list)  # every tag any current reviewer set
    reviewers: list[str] = field(default_factory=list)  # names of the reviewers who decided
    votes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"edit_id": self.edit_id, "decision": self.decision, "source": self.source,
                "ai_decision": self.ai_decision, "review_decision": self.review_decision,
                "review_tags": list(self.review_tags), "reviewers": list(self.reviewers), "votes": dict(self.votes)}


def human_majority(decisions: list[str]) -> str | None:
    """accepted or rejected by majority; None for no decisions or a tie."""
    votes = Counter(d for d in decisions if d in (ACCEPTED, REJECTED))
    if votes[ACCEPTED] == votes[REJECTED]:
        return None
    return ACCEPTED if votes[ACCEPTED] > votes[REJECTED] else REJECTED


def final_decisions(session: Session, edit_ids: list[int] | None = None) -> dict[int, FinalDecision]:
    """The final decision of every edit (or of ``edit_ids``), keyed by edit id."""
    if edit_ids is None:
        ids = list(session.scalars(select(Edit.id).order_by(Edit.id)))
    else:
        ids = sorted(set(session.scalars(select(Edit.id).where(Edit.id.in_(edit_ids)))))
    ai_query = select(Decision.edit_id, Decision.decision)
    if edit_ids is not None:
        ai_query = ai_query.where(Decision.edit_id.in_(ids))
    ai = {int(e): str(d) for e, d in session.execute(ai_query)}
    names = {k: v for k, v in session.execute(select(Reviewer.id, Reviewer.name))}
    people: dict[int, list[tuple[str, str, list[str]]]] = {}
    for edit_id, reviewer_id, decision, tags in current_decisions(session, edit_ids):
        people.setdefault(edit_id, []).append((names.get(reviewer_id, str(reviewer_id)), decision, tags))
    out: dict[int, FinalDecision] = {}
    for eid in ids:
        votes_of = people.get(eid, [])
        ai_decision = ai.get(eid)
        if votes_of:
            decisions = [d for _, d, _ in votes_of]
            majority = human_majority(decisions)
            tags = sorted({t for _, _, ts in votes_of for t in ts})
            out[eid] = FinalDecision(
                eid, majority, "human" if majority else "tie", ai_decision, majority, tags,
                sorted(n for n, _, _ in votes_of), dict(Counter(decisions)))
        else:
            out[eid] = FinalDecision(eid, ai_decision, "ai" if ai_decision else "none", ai_decision)
    return out
