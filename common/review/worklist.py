"""The queue as the pages and the API both serve it: filters parsed from a query string, one
page of items, and recording or undoing a reviewer's decisions.

Everything a request names is checked here before it reaches the database, so a value the
store cannot hold (a NUL character, a number beyond 64 bits, NaN) is an ``InputError`` (422),
never a database error.
"""

from __future__ import annotations

import math
from typing import Any

from common.core.errors import InputError
from common.domain import overrule
from common.domain import review_queue as queries
from common.review.deps import Principal, ReviewContext, UnknownEditError

SORTS = ("uncertain", "newest", "oldest")
MAX_LIMIT = 200
#: the largest OFFSET both SQLite and PostgreSQL take (a signed 64-bit integer)
MAX_OFFSET = 2**63 - 1
TEXT_FILTERS = ("recipe", "site", "category", "reason", "score")

#: the queue's query parameters, for the OpenAPI schema (the app parses them itself, below)
FILTER_PARAMETERS: list[dict[str, Any]] = [
    *({"name": key, "in": "query", "required": False, "schema": {"type": "string"}}
      for key in ("recipe", "site", "category", "reason")),
    {"name": "ai", "in": "query", "required": False, "schema": {"type": "string", "enum": list(queries.AI_FILTERS)}},
    {"name": "score", "in": "query", "required": False,
     "schema": {"type": "string"}, "description": "SCORER.METRIC, e.g. clip.clip_score"},
    {"name": "score_min", "in": "query", "required": False, "schema": {"type": "number"}},
    {"name": "score_max", "in": "query", "required": False, "schema": {"type": "number"}},
    {"name": "mine", "in": "query", "required": False, "schema": {"type": "string", "enum": list(queries.MINE)}},
    {"name": "sort", "in": "query", "required": False, "schema": {"type": "string", "enum": list(SORTS)}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}},
]


def check_text(key: str, value: str | None) -> str | None:
    """``value`` unless it holds a NUL character (PostgreSQL text cannot hold one)."""
    if value is not None and "\x00" in value:
        raise InputError(f"{key} must not contain a NUL character")
    return value


def _number(params: Any, key: str) -> float | None:
    raw = params.get(key)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{key} must be a finite number, got {raw!r}")
    return value


def _whole(params: Any, key: str) -> int | None:
    """A whole number; ``2.5`` counts as 2, as it always has, and ``1e3`` as 1000."""
    raw = params.get(key)
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        value = _number(params, key)
        return None if value is None else int(value)


def _choice(params: Any, key: str, allowed: tuple[str, ...], default: str | None) -> Any:
    raw = params.get(key) or default
    if raw is not None and raw not in allowed:
        raise InputError(f"{key} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def parse_filter(params: Any, page_size: int) -> tuple[queries.QueueFilter, int, int]:
    """(filter, limit, offset) from a query string; a bad value is an ``InputError``."""
    for key in TEXT_FILTERS:
        check_text(key, params.get(key))
    scorer, metric = queries.parse_score_key(params.get("score"))
    f = queries.QueueFilter(
        recipe=params.get("recipe") or None, site=params.get("site") or None,
        category=params.get("category") or None, ai=_choice(params, "ai", queries.AI_FILTERS, None),
        reason=params.get("reason") or None, scorer=scorer, metric=metric,
        score_min=_number(params, "score_min"), score_max=_number(params, "score_max"),
        mine=_choice(params, "mine", queries.MINE, "pending"), sort=_choice(params, "sort", SORTS, "uncertain"))
    limit = _whole(params, "limit") or page_size
    offset = _whole(params, "offset") or 0
    if not 1 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise InputError(f"limit must be 1-{MAX_LIMIT} and offset 0-{MAX_OFFSET}")
    return f, limit, offset


def queue_page(ctx: ReviewContext, who: Principal, f: queries.QueueFilter, limit: int, offset: int, *,
               options: bool = True) -> dict[str, Any]:
    """One page of the queue: its items, the total (``total_is_estimate``: the planner's estimate
    of a large filtered queue, see ``queries.queue_total``), the reviewer's progress and (for the
    page) the values each filter can take; ``sets``: for the items that are candidates of a best-of-N
    selection, their set (``common.domain.overrule.badges``)."""
    required = ctx.settings.required
    with ctx.db.session() as s:
        if ctx.db.dialect == "postgresql":  # count, page and progress from one snapshot
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        ids, total, estimated = queries.queue_ids(s, f, who.reviewer_id, required=required, limit=limit,
                                                  offset=offset)
        items = queries.load_items(s, ids, who.reviewer_id, with_others=who.is_admin)
        return {"items": items, "sets": overrule.badges(s, ids), "total": total, "total_is_estimate": estimated,
                "offset": offset, "limit": limit, "progress": queries.progress(s, who.reviewer_id, required=required),
                "options": queries.filter_options(s) if options else {}}


def record(ctx: ReviewContext, who: Principal, edit_ids: list[int], action: str, chosen: list[str],
           note: str | None) -> dict[str, Any]:
    """Record ``action`` on ``edit_ids``; the first row and the reviewer's progress."""
    with ctx.db.session() as s:
        try:
            rows = queries.record(s, who.reviewer_id, edit_ids, action, tags=chosen, note=note)
        except queries.UnknownEdit as exc:
            raise UnknownEditError(int(exc.args[0])) from None
        prog = queries.progress(s, who.reviewer_id, required=ctx.settings.required)
        return {"edit_id": rows[0].edit_id, "decision": rows[0].decision, "tags": rows[0].tags,
                "note": rows[0].note, "review_id": rows[0].id, "progress": prog}


def undo(ctx: ReviewContext, who: Principal) -> dict[str, Any]:
    """Undo the reviewer's newest decision (or batch); the rows added and their progress."""
    with ctx.db.session() as s:
        rows = queries.undo(s, who.reviewer_id)
        undone = [{"edit_id": r.edit_id, "decision": r.decision if r.decision in queries.DECIDED else None,
                   "tags": list(r.tags or []), "note": r.note, "review_id": r.id} for r in rows]
        return {"undone": undone, "progress": queries.progress(s, who.reviewer_id, required=ctx.settings.required)}
