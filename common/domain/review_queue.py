"""The review queue and recording decisions.

A reviewer's current decision on an edit is their newest ``reviews`` row for it. Rows are only
added: a decision, a change of mind, an undo (a row restoring the state before the undone one).
A database trigger copies each reviewer's newest row to ``review_current`` and keeps per-edit
counts in ``review_edit_counts`` (migration 0011): the queue and the stats read those.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Select, String, and_, cast, exists, func, literal, select, union
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from common.core.errors import InputError
from common.store.rows import (
    Analysis,
    Asset,
    Decision,
    Edit,
    ItemSet,
    ItemSetAsset,
    Review,
    ReviewCurrent,
    ReviewEditCount,
    Reviewer,
    Score,
)

ACCEPTED, REJECTED, CLEARED = "accepted", "rejected", "cleared"
DECIDED = (ACCEPTED, REJECTED)
#: what the API and keyboard say -> what a row stores
ACTIONS = {"accept": ACCEPTED, "reject": REJECTED}
MINE = ("pending", "done", "all")
AI_FILTERS = ("accepted", "rejected", "none")
#: the largest id an edit can have: ``edits.id`` is an INTEGER, 32-bit on PostgreSQL; a larger
#: one names no edit (and would overflow the query)
MAX_ID = 2**31 - 1


class UnknownEdit(LookupError):
    """No edit with this id."""


def _storable(edit_ids: list[int]) -> list[int]:
    """The ids that can name a row at all (others match nothing)."""
    return [e for e in edit_ids if 0 <= e <= MAX_ID]


@dataclass
class QueueFilter:
    """What the queue shows; every field is optional."""

    recipe: str | None = None
    site: str | None = None
    category: str | None = None
    ai: Literal["accepted", "rejected", "none"] | None = None
    reason: str | None = None  # an AI reason code
    scorer: str | None = None  # score range: SCORER.METRIC between score_min and score_max
    metric: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    mine: Literal["pending", "done", "all"] = "pending"
    sort: Literal["uncertain", "newest", "oldest"] = "uncertain"

    def as_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("recipe", "site", "category", "ai", "reason", "score_min", "score_max"):
            if getattr(self, key) not in (None, ""):
                out[key] = getattr(self, key)
        if self.scorer and self.metric:
            out["score"] = f"{self.scorer}.{self.metric}"
        out["mine"] = self.mine
        out["sort"] = self.sort
        return out


def parse_score_key(value: str | None) -> tuple[str | None, str | None]:
    """``"clip.clip_score"`` -> ("clip", "clip_score"); an empty value is no score filter."""
    if not value:
        return None, None
    scorer, dot, metric = value.partition(".")
    if not dot or not scorer or not metric:
        raise InputError(f"score filter {value!r}: write SCORER.METRIC, e.g. clip.clip_score")
    return scorer, metric


def _decided_by(reviewer_id: int, edit_id: Any) -> Any:
    """The reviewer currently accepts or rejects the edit: one primary-key probe."""
    return exists().where(ReviewCurrent.reviewer_id == reviewer_id, ReviewCurrent.edit_id == edit_id,
                          ReviewCurrent.decision.in_(DECIDED))


def _reviewed_enough(edit_id: Any, required: int) -> Any:
    """``required`` reviewers or more currently decide the edit: one primary-key probe."""
    return exists().where(ReviewEditCount.edit_id == edit_id,
                          ReviewEditCount.accepted + ReviewEditCount.rejected >= required)


def _score_filter(f: QueueFilter) -> bool:
    return bool(f.scorer and f.metric and (f.score_min is not None or f.score_max is not None))


def _only_ai(f: QueueFilter) -> bool:
    """No filter but the AI decision (and mine): the total can be counted exactly and cheaply."""
    return not (f.recipe or f.site or f.category or f.reason or _score_filter(f))


def _filtered(q: Select[Any], f: QueueFilter, edit_id: Any, reviewer_id: int, required: int,
              *, edit_joined: bool, postgres: bool) -> Select[Any]:
    """``q`` (edits named by ``edit_id``, ``decisions`` joined) narrowed by everything in ``f``
    but the AI decision, which the caller applies to fit its index."""
    if f.recipe or f.site or f.category:
        if not edit_joined:
            q = q.join(Edit, Edit.id == edit_id)
        if f.recipe:
            q = q.join(ItemSet, ItemSet.id == Edit.item_set_id).where(ItemSet.recipe == f.recipe)
        if f.site or f.category:
            primary = aliased(Asset)
            q = (q.join(ItemSetAsset, and_(ItemSetAsset.item_set_id == Edit.item_set_id, ItemSetAsset.position == 0))
                 .join(primary, primary.id == ItemSetAsset.asset_id))
            if f.site:
                q = q.where(primary.site == f.site)
            if f.category:
                q = q.where(primary.category == f.category)
    if f.reason and postgres:  # one element of the list, by the GIN index ix_decisions_reasons (0011)
        q = q.where(cast(Decision.reasons, JSONB).contains(cast(literal(json.dumps([f.reason])), JSONB)))
    elif f.reason:  # reasons is a JSON list of codes; its text holds each code quoted
        q = q.where(cast(Decision.reasons, String).contains(f'"{f.reason}"', autoescape=True))
    if _score_filter(f):
        value = Score.metrics[f.metric].as_float()
        cond = [Score.edit_id == edit_id, Score.scorer == f.scorer]
        if f.score_min is not None:
            cond.append(value >= f.score_min)
        if f.score_max is not None:
            cond.append(value <= f.score_max)
        q = q.where(exists().where(*cond))
    if f.mine == "done":
        q = q.where(_decided_by(reviewer_id, edit_id))
    elif f.mine == "pending":
        q = q.where(~_decided_by(reviewer_id, edit_id), ~_reviewed_enough(edit_id, required))
    return q


def _with_margin(f: QueueFilter, reviewer_id: int, required: int, postgres: bool) -> Select[Any] | None:
    """The matching edits whose AI decision has a margin, walked in ``ix_decisions_margin`` (or
    ``ix_decisions_decision_margin``) order; None when the filter wants undecided edits."""
    if f.ai == "none":
        return None
    q = select(Decision.edit_id).where(Decision.margin.is_not(None))
    if f.ai:
        q = q.where(Decision.decision == f.ai)
    return _filtered(q, f, Decision.edit_id, reviewer_id, required, edit_joined=False, postgres=postgres)


def _without_margin(f: QueueFilter, reviewer_id: int, required: int, postgres: bool) -> Select[Any]:
    """The matching edits with no AI decision, or one without a margin (the end of the queue)."""
    if f.ai in DECIDED:  # straight from the decisions index: margin IS NULL within one decision
        q = select(Decision.edit_id).where(Decision.decision == f.ai, Decision.margin.is_(None))
        return _filtered(q, f, Decision.edit_id, reviewer_id, required, edit_joined=False, postgres=postgres)
    q = select(Edit.id).outerjoin(Decision, Decision.edit_id == Edit.id)
    q = q.where(Decision.id.is_(None)) if f.ai == "none" else q.where(Decision.margin.is_(None))
    return _filtered(q, f, Edit.id, reviewer_id, required, edit_joined=True, postgres=postgres)


def _all(f: QueueFilter, reviewer_id: int, required: int, postgres: bool) -> Select[Any]:
    """Every matching edit (its id), for the orders by id and for counting."""
    q = select(Edit.id).outerjoin(Decision, Decision.edit_id == Edit.id)
    if f.ai == "none":
        q = q.where(Decision.id.is_(None))
    elif f.ai:
        q = q.where(Decision.decision == f.ai)
    return _filtered(q, f, Edit.id, reviewer_id, required, edit_joined=True, postgres=postgres)


#: on PostgreSQL a filtered total is counted exactly when the planner expects at most this many
#: edits (and there are); above it the planner's estimate is shown, marked as one
EXACT_TOTAL_UP_TO = 5000


def _edits(session: Session) -> int:
    """Edits in all, counted once per session (the total and the progress line both need it)."""
    if "review_edits" not in session.info:
        session.info["review_edits"] = session.scalar(select(func.count(Edit.id))) or 0
    return int(session.info["review_edits"])


def _count(session: Session, q: Select[Any]) -> int:
    return session.scalar(select(func.count()).select_from(q.subquery())) or 0


def _planned_rows(session: Session, q: Select[Any]) -> int:
    """PostgreSQL's estimate of how many rows ``q`` returns (EXPLAIN, nothing is run)."""
    conn = session.connection()
    compiled = q.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    plan: Any = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def _total_only_ai(session: Session, f: QueueFilter, reviewer_id: int, required: int) -> int:
    """The exact total when only the AI decision filters: edits (or decisions) counted from a
    primary-key or decision index, less the few reviewed edits the queue leaves out."""
    if f.ai in DECIDED:
        base = session.scalar(select(func.count()).where(Decision.decision == f.ai)) or 0
    else:
        base = _edits(session)
        if f.ai == "none":
            base -= session.scalar(select(func.count(Decision.id))) or 0
    if f.mine == "all":
        return base
    left_out = union(
        select(ReviewEditCount.edit_id.label("edit_id"))
        .where(ReviewEditCount.accepted + ReviewEditCount.rejected >= required),
        select(ReviewCurrent.edit_id.label("edit_id"))
        .where(ReviewCurrent.reviewer_id == reviewer_id, ReviewCurrent.decision.in_(DECIDED))).subquery()
    q = select(left_out.c.edit_id)
    # a scalar subquery: one probe of the decisions' edit_id index per left-out edit (a join or
    # EXISTS may be planned as a pass over every decision of that kind)
    ai = select(Decision.decision).where(Decision.edit_id == left_out.c.edit_id).scalar_subquery()
    if f.ai in DECIDED:
        q = q.where(ai == f.ai)
    elif f.ai == "none":
        q = q.where(ai.is_(None))
    return base - _count(session, q)


def queue_total(session: Session, f: QueueFilter, reviewer_id: int, *, required: int) -> tuple[int, bool]:
    """How many edits match, and whether that is an estimate. Exact on SQLite, for "my
    decisions" and when only the AI decision filters; on PostgreSQL other filters are counted
    exactly up to ``EXACT_TOTAL_UP_TO`` edits and estimated by the planner above that."""
    postgres = session.get_bind().dialect.name == "postgresql"
    q = _all(f, reviewer_id, required, postgres)
    if not postgres or f.mine == "done":
        return _count(session, q), False
    if _only_ai(f):
        return _total_only_ai(session, f, reviewer_id, required), False
    planned = _planned_rows(session, q)
    if planned <= EXACT_TOTAL_UP_TO:
        counted = _count(session, q.limit(EXACT_TOTAL_UP_TO + 1))
        if counted <= EXACT_TOTAL_UP_TO:
            return counted, False
        planned = counted
    return planned, True


def queue_ids(session: Session, f: QueueFilter, reviewer_id: int, *, required: int, limit: int,
              offset: int = 0) -> tuple[list[int], int, bool]:
    """The ids of one page of the queue, in order; how many edits match in all, and whether that
    number is an estimate (:func:`queue_total`).

    Each order walks an index and stops after the page: edit ids for newest and oldest; for
    least certain first the AI decisions by margin (``ix_decisions_margin``), then the edits
    without a margin by id. Filters are checked on the way, "mine" by primary-key probes of
    ``review_current`` and ``review_edit_counts``."""
    total, estimated = queue_total(session, f, reviewer_id, required=required)
    postgres = session.get_bind().dialect.name == "postgresql"
    if f.sort != "uncertain":
        q = _all(f, reviewer_id, required, postgres).order_by(Edit.id.desc() if f.sort == "newest" else Edit.id)
        return list(session.scalars(q.limit(limit).offset(offset))), total, estimated
    ids: list[int] = []
    with_margin = _with_margin(f, reviewer_id, required, postgres)
    skip = offset
    if with_margin is not None:
        ids = list(session.scalars(with_margin.order_by(Decision.margin, Decision.edit_id)
                                   .limit(limit).offset(offset)))
        if len(ids) == limit or (not estimated and offset + len(ids) >= total):
            return ids, total, estimated  # the page is full, or nothing is left after it
        skip = max(0, offset - _count(session, with_margin)) if not ids else 0
    rest = _without_margin(f, reviewer_id, required, postgres).order_by(Decision.edit_id if f.ai in DECIDED else Edit.id)
    ids += session.scalars(rest.limit(limit - len(ids)).offset(skip))
    return ids, total, estimated


def progress(session: Session, reviewer_id: int, *, required: int) -> dict[str, int]:
    """Edits in all, edits with enough reviews, and how many this reviewer decided."""
    total = _edits(session)
    complete = session.scalar(select(func.count()).where(
        ReviewEditCount.accepted + ReviewEditCount.rejected >= required)) or 0
    mine = session.scalar(select(func.count()).where(
        ReviewCurrent.reviewer_id == reviewer_id, ReviewCurrent.decision.in_(DECIDED))) or 0
    return {"edits": total, "reviewed": complete, "remaining": total - complete, "mine": mine,
            "required": required}


def filter_options(session: Session) -> dict[str, list[str]]:
    """The values each filter can take, from the store."""
    primary = (select(Asset.site, Asset.category)
               .join(ItemSetAsset, and_(ItemSetAsset.asset_id == Asset.id, ItemSetAsset.position == 0))
               .join(Edit, Edit.item_set_id == ItemSetAsset.item_set_id).subquery())
    sites = sorted(v for v in session.scalars(select(primary.c.site).distinct()) if v)
    categories = sorted(v for v in session.scalars(select(primary.c.category).distinct()) if v)
    recipes = sorted(v for v in session.scalars(
        select(ItemSet.recipe).join(Edit, Edit.item_set_id == ItemSet.id).distinct()) if v)
    reasons: set[str] = set()
    for row in session.scalars(select(Decision.reasons).where(Decision.decision == REJECTED)):
        reasons.update(str(r) for r in row or [])
    metrics: set[str] = set()
    # the newest scores are enough to list the metric names (JSON has no equality for DISTINCT)
    for scorer, m in session.execute(select(Score.scorer, Score.metrics).order_by(Score.id.desc()).limit(2000)):
        metrics.update(f"{scorer}.{k}" for k, v in (m or {}).items() if isinstance(v, int | float))
    return {"recipes": recipes, "sites": sites, "categories": categories, "reasons": sorted(reasons),
            "scores": sorted(metrics)}


@dataclass
class Item:
    """Everything the page shows of one edit."""

    edit_id: int
    recipe: str
    origin: str
    edit_prompt: str
    site: str | None
    category: str | None
    garments: int
    width: int
    height: int
    analysis: dict[str, Any] | None
    scores: dict[str, dict[str, Any]]
    ai: dict[str, Any] | None
    mine: dict[str, Any] | None
    reviews: int  # reviewers with a decision on it
    others: list[dict[str, Any]] = field(default_factory=list)  # admins see who decided what

    def as_dict(self) -> dict[str, Any]:
        base = f"/images/{self.edit_id}"
        return {
            "edit_id": self.edit_id, "recipe": self.recipe, "origin": self.origin,
            "edit_prompt": self.edit_prompt, "site": self.site, "category": self.category,
            "images": {"input": f"{base}/input", "edited": f"{base}/edited",
                       "garments": [f"{base}/garment/{i}" for i in range(self.garments)]},
            "size": [self.width, self.height], "analysis": self.analysis, "scores": self.scores,
            "ai": self.ai, "mine": self.mine, "reviews": self.reviews,
            **({"others": self.others} if self.others else {}),
        }


def load_items(session: Session, edit_ids: list[int], reviewer_id: int, *, with_others: bool = False) -> list[Item]:
    """The items of ``edit_ids``, in that order (unknown ids are left out)."""
    edit_ids = _storable(edit_ids)
    if not edit_ids:
        return []
    edits = {e.id: e for e in session.scalars(select(Edit).where(Edit.id.in_(edit_ids)))}
    sets = {s.id: s for s in session.scalars(select(ItemSet).where(
        ItemSet.id.in_({e.item_set_id for e in edits.values()})))}
    analyses = {a.id: a for a in session.scalars(select(Analysis).where(
        Analysis.id.in_({e.analysis_id for e in edits.values() if e.analysis_id})))}
    decisions = {d.edit_id: d for d in session.scalars(select(Decision).where(Decision.edit_id.in_(edit_ids)))}
    scores: dict[int, dict[str, dict[str, Any]]] = {}
    for sc in session.scalars(select(Score).where(Score.edit_id.in_(edit_ids)).order_by(Score.scorer)):
        scores.setdefault(sc.edit_id, {})[sc.scorer] = {
            "metrics": sc.metrics or {}, **({"error": sc.error_code} if sc.error_code else {})}
    rows = session.execute(select(ReviewCurrent).where(ReviewCurrent.edit_id.in_(edit_ids))
                           .order_by(ReviewCurrent.edit_id, ReviewCurrent.review_id)).scalars().all()
    mine: dict[int, dict[str, Any]] = {}
    decided: dict[int, int] = {}
    others: dict[int, list[dict[str, Any]]] = {}
    names = {}
    if with_others:

        names = {k: v for k, v in session.execute(select(Reviewer.id, Reviewer.name))}
    for r in rows:
        if r.decision in DECIDED:
            decided[r.edit_id] = decided.get(r.edit_id, 0) + 1
            if with_others:
                others.setdefault(r.edit_id, []).append(
                    {"reviewer": names.get(r.reviewer_id), "decision": r.decision, "tags": list(r.tags or [])})
        if r.reviewer_id == reviewer_id and r.decision in DECIDED:
            mine[r.edit_id] = {"decision": r.decision, "tags": list(r.tags or []), "note": r.note,
                               "at": r.created_at.isoformat() if r.created_at else None}
    out = []
    for eid in edit_ids:
        e = edits.get(eid)
        if e is None:
            continue
        item_set = sets[e.item_set_id]
        members = item_set.members
        primary = members[0].asset if members else None
        analysis = analyses.get(e.analysis_id) if e.analysis_id else None
        d = decisions.get(eid)
        out.append(Item(
            edit_id=eid, recipe=item_set.recipe, origin=e.origin,
            edit_prompt=e.edit_prompt or (analysis.edit_prompt if analysis else "") or "",
            site=primary.site if primary else None, category=primary.category if primary else None,
            garments=max(0, len(members) - 1), width=e.width, height=e.height,
            analysis=analysis.data if analysis else None, scores=scores.get(eid, {}),
            ai=None if d is None else {"decision": d.decision, "reasons": list(d.reasons or []),
                                       "margin": d.margin, "failed": d.failed or {}},
            mine=mine.get(eid), reviews=decided.get(eid, 0), others=others.get(eid, []),
        ))
    return out


def image_uri(session: Session, edit_id: int, which: str, index: int = 0) -> tuple[str, str] | None:
    """(URI, format) of an edit's input, edited or n-th garment image; None when there is none.
    URIs come only from the store: a request names an edit and a slot, never a path."""
    edit = session.get(Edit, edit_id) if _storable([edit_id]) else None
    if edit is None:
        return None
    if which == "edited":
        return edit.output_uri, edit.output_uri.rsplit(".", 1)[-1]
    item_set = session.get(ItemSet, edit.item_set_id)
    members = item_set.members if item_set is not None else []
    pos = 0 if which == "input" else index + 1
    if which not in ("input", "garment") or pos >= len(members) or pos < 0:
        return None
    asset = members[pos].asset
    return asset.uri, asset.format


def check_tags(tags: list[Any], allowed: list[str]) -> list[str]:
    bad = [t for t in tags if not isinstance(t, str) or t not in allowed]
    if bad:
        raise InputError(f"unknown tags {bad!r}; allowed: {', '.join(allowed)}")
    return sorted(set(tags), key=allowed.index)


def record(session: Session, reviewer_id: int, edit_ids: list[int], action: str, *, tags: list[str] | None = None,
           note: str | None = None) -> list[Review]:
    """Record ``action`` (accept | reject) by the reviewer on each edit; several edits make one
    batch, undone together."""
    if action not in ACTIONS:
        raise InputError(f"decision {action!r}: must be accept or reject")
    known = set(session.scalars(select(Edit.id).where(Edit.id.in_(_storable(edit_ids)))))
    missing = [e for e in edit_ids if e not in known]
    if missing:
        raise UnknownEdit(missing[0])
    batch = uuid.uuid4().hex if len(edit_ids) > 1 else None
    rows = [Review(reviewer_id=reviewer_id, edit_id=e, decision=ACTIONS[action], tags=list(tags or []),
                   note=note or None, batch_id=batch) for e in edit_ids]
    session.add_all(rows)
    session.flush()
    return rows


def undo(session: Session, reviewer_id: int) -> list[Review]:
    """Undo the reviewer's newest decision (or accept-all batch) not undone yet: add rows that
    restore each edit's state before it. Returns the added rows (none: nothing to undo)."""
    undone = select(Review.undoes_id).where(Review.reviewer_id == reviewer_id, Review.undoes_id.is_not(None))
    target = session.scalar(select(Review).where(
        Review.reviewer_id == reviewer_id, Review.undoes_id.is_(None), Review.id.not_in(undone))
        .order_by(Review.id.desc()).limit(1))
    if target is None:
        return []
    targets = [target]
    if target.batch_id:
        targets = list(session.scalars(select(Review).where(
            Review.reviewer_id == reviewer_id, Review.batch_id == target.batch_id,
            Review.undoes_id.is_(None), Review.id.not_in(undone)).order_by(Review.id)))
    added = []
    for t in targets:
        before = session.scalar(select(Review).where(
            Review.reviewer_id == reviewer_id, Review.edit_id == t.edit_id, Review.id < t.id)
            .order_by(Review.id.desc()).limit(1))
        added.append(Review(reviewer_id=reviewer_id, edit_id=t.edit_id,
                            decision=before.decision if before else CLEARED,
                            tags=list(before.tags or []) if before else [],
                            note=before.note if before else None, undoes_id=t.id))
    session.add_all(added)
    session.flush()
    return added


def current_decisions(session: Session, edit_ids: list[int] | None = None) -> list[tuple[int, int, str, list[str]]]:
    """(edit_id, reviewer_id, decision, tags) of every reviewer's current decision (cleared
    ones left out)."""
    cur = ReviewCurrent
    q = select(cur.edit_id, cur.reviewer_id, cur.decision, cur.tags).where(cur.decision.in_(DECIDED))
    if edit_ids is not None:
        q = q.where(cur.edit_id.in_(_storable(edit_ids)))
    return [(int(e), int(r), str(d), list(t or []))
            for e, r, d, t in session.execute(q.order_by(cur.edit_id, cur.reviewer_id))]
