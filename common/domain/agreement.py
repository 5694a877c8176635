"""How far reviewers agree with each other and with the AI decision.

- Between people: Cohen's kappa (scikit-learn) when two reviewers decided, over the edits both
  decided; Krippendorff's alpha (nominal, the ``krippendorff`` package) for three or more,
  over every edit at least two decided (missing decisions allowed).
- AI against people: on edits with both an AI decision and a human majority, how often they
  match, where they differ (the AI accepted what people rejected, and the reverse), and per AI
  reason code how often people confirmed the rejection: what tells whether a threshold is right.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.domain.final_decision import human_majority
from common.domain.review_queue import ACCEPTED, REJECTED, current_decisions
from common.store.rows import Decision, Reviewer

_CODE = {REJECTED: 0, ACCEPTED: 1}


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two aligned decision lists (None when undefined: no items, or both
    reviewers gave one same answer throughout)."""
    if not a:
        return None
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (one label only) is reported as None
        return _finite(cohen_kappa_score(a, b, labels=[ACCEPTED, REJECTED]))


def krippendorff_alpha(matrix: list[list[float]]) -> float | None:
    """Nominal Krippendorff's alpha of a reviewers x edits matrix (nan = not decided)."""
    import krippendorff
    import numpy as np

    data = np.array(matrix, dtype=float)
    if data.size == 0 or (np.sum(~np.isnan(data), axis=0) >= 2).sum() == 0:
        return None
    try:
        return _finite(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    except ValueError:  # one value only across the data: alpha is undefined
        return None


def reviewer_agreement(session: Session) -> dict[str, Any]:
    by_reviewer: dict[int, dict[int, str]] = defaultdict(dict)
    for edit_id, reviewer_id, decision, _ in current_decisions(session):
        by_reviewer[reviewer_id][edit_id] = decision
    names = {k: v for k, v in session.execute(select(Reviewer.id, Reviewer.name))}
    reviewers = sorted(by_reviewer)
    out: dict[str, Any] = {"reviewers": len(reviewers), "method": None, "value": None, "edits": 0, "pairs": []}
    if len(reviewers) < 2:
        return out
    for r1, r2 in combinations(reviewers, 2):
        shared = sorted(set(by_reviewer[r1]) & set(by_reviewer[r2]))
        a = [by_reviewer[r1][e] for e in shared]
        b = [by_reviewer[r2][e] for e in shared]
        out["pairs"].append({"reviewers": [names.get(r1), names.get(r2)], "edits": len(shared),
                             "cohen_kappa": cohen_kappa(a, b),
                             "percent_agreement": round(sum(x == y for x, y in zip(a, b, strict=True)) / len(shared), 4)
                             if shared else None})
    if len(reviewers) == 2:
        pair = out["pairs"][0]
        out.update(method="cohen_kappa", value=pair["cohen_kappa"], edits=pair["edits"])
        return out
    edits = sorted({e for r in reviewers for e in by_reviewer[r]})
    multi = [e for e in edits if sum(e in by_reviewer[r] for r in reviewers) >= 2]
    matrix = [[float(_CODE[by_reviewer[r][e]]) if e in by_reviewer[r] else math.nan for e in multi]
              for r in reviewers]
    out.update(method="krippendorff_alpha", value=krippendorff_alpha(matrix), edits=len(multi))
    return out


def ai_agreement(session: Session) -> dict[str, Any]:
    votes: dict[int, list[str]] = defaultdict(list)
    for edit_id, _, decision, _ in current_decisions(session):
        votes[edit_id].append(decision)
    human = {e: m for e, v in votes.items() if (m := human_majority(v)) is not None}
    rows = session.execute(select(Decision.edit_id, Decision.decision, Decision.reasons)
                           .where(Decision.edit_id.in_(list(human)))).all() if human else []
    matched = 0
    confusion: Counter[str] = Counter()
    by_reason: dict[str, Counter[str]] = defaultdict(Counter)
    ai_list, human_list = [], []
    for edit_id, ai, reasons in rows:
        h = human[edit_id]
        ai_list.append(ai)
        human_list.append(h)
        matched += ai == h
        confusion[f"ai_{ai}_human_{h}"] += 1
        for code in reasons or []:
            by_reason[str(code)]["confirmed" if h == REJECTED else "overruled"] += 1
    n = len(rows)
    return {
        "edits": n,
        "agreement": round(matched / n, 4) if n else None,
        "cohen_kappa": cohen_kappa(ai_list, human_list),
        "ai_accepted_human_rejected": confusion[f"ai_{ACCEPTED}_human_{REJECTED}"],
        "ai_rejected_human_accepted": confusion[f"ai_{REJECTED}_human_{ACCEPTED}"],
        "ai_accepted_human_accepted": confusion[f"ai_{ACCEPTED}_human_{ACCEPTED}"],
        "ai_rejected_human_rejected": confusion[f"ai_{REJECTED}_human_{REJECTED}"],
        "by_reason": {code: {"confirmed": c["confirmed"], "overruled": c["overruled"],
                             "confirmed_share": round(c["confirmed"] / (c["confirmed"] + c["overruled"]), 4)}
                      for code, c in sorted(by_reason.items())},
    }


def agreement_summary(session: Session) -> dict[str, Any]:
    """The review section of ``summary.json`` and of the stats page."""
    decided = current_decisions(session)
    tags: Counter[str] = Counter(t for _, _, _, ts in decided for t in ts)
    return {
        "decisions": len(decided),
        "edits_reviewed": len({e for e, _, _, _ in decided}),
        "between_reviewers": reviewer_agreement(session),
        "ai_vs_human": ai_agreement(session),
        "tags": dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
