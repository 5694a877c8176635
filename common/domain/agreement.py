"""How far reviewers agree with each other and with the AI decision.

- Between people: Cohen's kappa (scikit-learn) when two reviewers decided, over the edits both
  decided; Krippendorff's alpha (nominal, the ``krippendorff`` package) for three or more,
  over every edit at least two decided (missing decisions allowed).
- AI against people: on edits with both an AI decision and a human majority, how often they
  match, where they differ (the AI accepted what people rejected, and the reverse), and per AI
  reason code how often people confirmed the rejection: what tells whether a threshold is right.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from sqlalchemy import String, and_, case, cast, func, literal, select
from sqlalchemy.orm import Session, aliased

from common.domain.review_queue import ACCEPTED, REJECTED
from common.store.rows import Decision, ReviewCurrent, ReviewEditCount, Reviewer


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


def _kappa_of(cells: dict[tuple[str, str], int]) -> float | None:
    """Cohen's kappa from counts of (first, second) decision pairs (scikit-learn, weighted)."""
    cells = {k: n for k, n in cells.items() if n}
    if not cells:
        return None
    from sklearn.metrics import cohen_kappa_score

    a, b = [k[0] for k in cells], [k[1] for k in cells]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (one label only) is reported as None
        return _finite(cohen_kappa_score(a, b, labels=[ACCEPTED, REJECTED], sample_weight=list(cells.values())))


def _alpha_of(units: dict[tuple[int, int], int]) -> float | None:
    """Nominal Krippendorff's alpha from how many edits have each (accepted, rejected) count:
    alpha depends on nothing else, so no reviewers x edits matrix is built."""
    import krippendorff
    import numpy as np

    units = {k: n for k, n in units.items() if n and sum(k) >= 2}
    if not units or not all(sum(k[i] for k in units) for i in (0, 1)):
        return None  # nothing pairable, or one value only: alpha is undefined
    counts = np.repeat(np.array([[r, a] for a, r in units], dtype=float), list(units.values()), axis=0)
    return _finite(krippendorff.alpha(value_counts=counts, level_of_measurement="nominal"))


def _decided() -> Any:
    return ReviewCurrent.decision.in_((ACCEPTED, REJECTED))


def reviewer_agreement(session: Session) -> dict[str, Any]:
    """Agreement between people, from ``review_current`` (pairs) and ``review_edit_counts``
    (alpha): rows of reviewed edits only, never every edit."""
    reviewers = sorted(int(r) for r in session.scalars(
        select(ReviewCurrent.reviewer_id).where(_decided()).group_by(ReviewCurrent.reviewer_id)))
    out: dict[str, Any] = {"reviewers": len(reviewers), "method": None, "value": None, "edits": 0, "pairs": []}
    if len(reviewers) < 2:
        return out
    names = {k: v for k, v in session.execute(select(Reviewer.id, Reviewer.name))}
    one, two = aliased(ReviewCurrent), aliased(ReviewCurrent)
    cells: dict[tuple[int, int], dict[tuple[str, str], int]] = defaultdict(dict)
    for r1, r2, d1, d2, n in session.execute(
            select(one.reviewer_id, two.reviewer_id, one.decision, two.decision, func.count())
            .join(two, and_(two.edit_id == one.edit_id, two.reviewer_id > one.reviewer_id))
            .where(one.decision.in_((ACCEPTED, REJECTED)), two.decision.in_((ACCEPTED, REJECTED)))
            .group_by(one.reviewer_id, two.reviewer_id, one.decision, two.decision)):
        cells[(int(r1), int(r2))][(str(d1), str(d2))] = int(n)
    for r1, r2 in combinations(reviewers, 2):
        pair = cells.get((r1, r2), {})
        shared = sum(pair.values())
        same = sum(n for (d1, d2), n in pair.items() if d1 == d2)
        out["pairs"].append({"reviewers": [names.get(r1), names.get(r2)], "edits": shared,
                             "cohen_kappa": _kappa_of(pair),
                             "percent_agreement": round(same / shared, 4) if shared else None})
    if len(reviewers) == 2:
        pair = out["pairs"][0]
        out.update(method="cohen_kappa", value=pair["cohen_kappa"], edits=pair["edits"])
        return out
    units = {(int(a), int(r)): int(n) for a, r, n in session.execute(
        select(ReviewEditCount.accepted, ReviewEditCount.rejected, func.count())
        .where(ReviewEditCount.accepted + ReviewEditCount.rejected >= 2)
        .group_by(ReviewEditCount.accepted, ReviewEditCount.rejected))}
    out.update(method="krippendorff_alpha", value=_alpha_of(units), edits=sum(units.values()))
    return out


def _majority() -> Any:
    """The people's majority of a ``review_edit_counts`` row (NULL: a tie or nobody)."""
    c = ReviewEditCount
    return case((c.accepted > c.rejected, ACCEPTED), (c.rejected > c.accepted, REJECTED), else_=None)


def ai_agreement(session: Session) -> dict[str, Any]:
    """The AI against the people's majority, over the edits that have both: grouped in the
    database by (AI decision, reasons, majority), so only a few rows come back."""
    # one probe of the decisions' edit_id index per reviewed edit, as a scalar subquery (a join
    # may be planned as a hash of every decision); "decision reasons-json" in one value
    ai_reasons = (select(Decision.decision + literal(" ") + cast(Decision.reasons, String))
                  .where(Decision.edit_id == ReviewEditCount.edit_id).scalar_subquery())
    per_edit = (select(ai_reasons.label("ai_reasons"), _majority().label("human"))
                .where(ReviewEditCount.accepted != ReviewEditCount.rejected).subquery())
    grouped = session.execute(
        select(per_edit.c.ai_reasons, per_edit.c.human, func.count()).where(per_edit.c.ai_reasons.is_not(None))
        .group_by(per_edit.c.ai_reasons, per_edit.c.human)).all()
    rows = [(*str(text).partition(" ")[::2], h, count) for text, h, count in grouped]
    n = matched = 0
    confusion: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    by_reason: dict[str, Counter[str]] = defaultdict(Counter)
    for ai, reasons_text, h, count in rows:
        n += count
        pairs[(str(ai), str(h))] += count
        matched += count if ai == h else 0
        confusion[f"ai_{ai}_human_{h}"] += count
        for code in json.loads(reasons_text) if reasons_text else []:
            by_reason[str(code)]["confirmed" if h == REJECTED else "overruled"] += count
    return {
        "edits": n,
        "agreement": round(matched / n, 4) if n else None,
        "cohen_kappa": _kappa_of(dict(pairs)),
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
    decisions, edits = session.execute(
        select(func.coalesce(func.sum(ReviewEditCount.accepted + ReviewEditCount.rejected), 0),
               func.count().filter(ReviewEditCount.accepted + ReviewEditCount.rejected > 0))).one()
    tags: Counter[str] = Counter()
    for tags_text, n in session.execute(
            select(cast(ReviewCurrent.tags, String), func.count()).where(_decided())
            .group_by(cast(ReviewCurrent.tags, String))):
        for t in json.loads(tags_text) if tags_text else []:
            tags[str(t)] += n
    return {
        "decisions": int(decisions),
        "edits_reviewed": int(edits),
        "between_reviewers": reviewer_agreement(session),
        "ai_vs_human": ai_agreement(session),
        "tags": dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
