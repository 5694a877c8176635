"""Decisions from stored scores: thresholds -> accepted | rejected with stable reason codes.

Pure and model-free, so ``synthpipe score --redecide`` re-decides every scored edit after the
thresholds change without importing torch. A threshold only applies to a metric that was
computed: an edit scored without the judge is never rejected for its judge score.

Reason codes (stable; counted, filtered and thresholded by code):

- one per metric threshold (:data:`RULES`): ``clip_image_low``, ``clip_direction_low``,
  ``clip_text_low``, ``dino_low``, ``garment_low``, ``ssim_too_high``, ``ssim_too_low``,
  ``change_too_large``, ``identity_lost``, ``judge_low``
- ``no_change``: SSIM at or above ``no_change_ssim`` *and* colour MAD at or below
  ``no_change_mad`` (a relit photo keeps its structure, so SSIM alone would call it unchanged)
- ``no_face``: the input had a face and the edit has none
- ``judge_failed``: the judge's verdict could not be had (it did not parse, say)
- ``score_failed``: another scorer failed on this edit
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import distinct, func, select, text
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.store.rows import Decision, Edit, ItemSet, Score, utcnow

if TYPE_CHECKING:
    from common.core.settings import Settings
    from common.store.db import Database


@dataclass(frozen=True)
class Rule:
    """``scorer.metric`` must be at least (``min``) or at most (``max``) ``thresholds[key]``."""

    code: str
    scorer: str
    metric: str
    bound: str  # "min" | "max"
    key: str
    #: divides the distance to the threshold, so every margin is on a 0-1 scale
    scale: float = 1.0


#: every per-metric threshold, by the code it rejects with
RULES: tuple[Rule, ...] = (
    Rule("clip_image_low", "clip", "clip_image", "min", "clip_image_min"),
    Rule("clip_direction_low", "clip", "clip_direction", "min", "clip_direction_min"),
    Rule("clip_text_low", "clip", "clip_text", "min", "clip_text_min"),
    Rule("dino_low", "dino", "dino_similarity", "min", "dino_min"),
    Rule("garment_low", "garment", "garment_max", "min", "garment_min"),
    Rule("ssim_too_high", "change", "ssim", "max", "ssim_max"),
    Rule("ssim_too_low", "change", "ssim", "min", "ssim_min"),
    Rule("change_too_large", "change", "mad", "max", "mad_max"),
    Rule("identity_lost", "identity", "identity_distance", "max", "identity_max"),
    Rule("judge_low", "judge", "judge_overall", "min", "judge_min", scale=10.0),  # ratings are 0-10
)

#: every reason code a decision can carry
REASON_CODES: tuple[str, ...] = (*(r.code for r in RULES), "no_change", "no_face", "judge_failed",
                                 "score_failed")


@dataclass
class DecisionResult:
    decision: str  # "accepted" | "rejected"
    reasons: list[str] = field(default_factory=list)
    #: code -> {"metric", "value", "threshold"} (scorer errors: {"scorer", "error"})
    failed: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    #: distance of the closest applied metric to its threshold (0-1 scale: the judge's 0-10
    #: ratings count a tenth); None when no threshold applied. Small: least certain
    margin: float | None = None


def decide(metrics_by_scorer: Mapping[str, Mapping[str, float]], errors: Mapping[str, str], recipe: str,
           thresholds: Mapping[str, float | None]) -> DecisionResult:
    """Decide one edit from its metrics (``{scorer: {metric: value}}``) and its scorer errors
    (``{scorer: error_code}``) against ``thresholds`` (the recipe's; ``None`` turns one off)."""
    failed: dict[str, Any] = {}
    margins: list[float] = []

    def metric(scorer: str, name: str) -> float | None:
        value = metrics_by_scorer.get(scorer, {}).get(name)
        return None if value is None else float(value)

    for rule in RULES:
        limit = thresholds.get(rule.key)
        value = metric(rule.scorer, rule.metric)
        if limit is None or value is None:
            continue
        margins.append(abs(value - limit) / rule.scale)
        bad = value < limit if rule.bound == "min" else value > limit
        if bad:
            failed[rule.code] = {"metric": f"{rule.scorer}.{rule.metric}", "value": value, "threshold": limit}

    ssim, mad = metric("change", "ssim"), metric("change", "mad")
    ssim_at, mad_at = thresholds.get("no_change_ssim"), thresholds.get("no_change_mad")
    if ssim is not None and mad is not None and ssim_at is not None and mad_at is not None:
        unchanged = ssim >= ssim_at and mad <= mad_at
        # flagged: moving either value across its bound clears it; not flagged: every unmet one must move
        distances = [abs(ssim - ssim_at), abs(mad - mad_at)]
        unmet = [d for d, met in zip(distances, (ssim >= ssim_at, mad <= mad_at), strict=True) if not met]
        margins.append(min(distances) if unchanged else max(unmet))
        if unchanged:
            failed["no_change"] = {"metric": "change.ssim+change.mad", "value": {"ssim": ssim, "mad": mad},
                                   "threshold": {"ssim_at_least": ssim_at, "mad_at_most": mad_at}}

    faces_in, faces_out = metric("identity", "faces_input"), metric("identity", "faces_edited")
    if faces_in is not None and faces_out is not None and faces_in >= 1 and faces_out == 0:
        failed["no_face"] = {"metric": "identity.faces_edited", "value": faces_out, "threshold": 1}

    for scorer, code in sorted(errors.items()):
        reason = "judge_failed" if scorer == "judge" else "score_failed"
        failed.setdefault(reason, {"scorers": {}})["scorers"][scorer] = code

    reasons = [code for code in REASON_CODES if code in failed]
    return DecisionResult(
        decision="rejected" if reasons else "accepted", reasons=reasons, failed=failed,
        thresholds={"recipe": recipe, **{k: v for k, v in thresholds.items() if v is not None}},
        margin=round(min(margins), 6) if margins else None,
    )


# --- the store side ------------------------------------------------------------------------


def stored_scores(session: Session, edit_id: int) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The metrics and errors stored for ``edit_id``, by scorer."""
    metrics: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for row in session.execute(select(Score).where(Score.edit_id == edit_id)).scalars():
        if row.error_code:
            errors[row.scorer] = row.error_code
        else:
            metrics[row.scorer] = {k: float(v) for k, v in (row.metrics or {}).items() if v is not None}
    return metrics, errors


def recipe_of(session: Session, edit: Edit) -> str:
    item_set = session.get(ItemSet, edit.item_set_id)
    return item_set.recipe if item_set is not None else "tryon"


def decide_edit(session: Session, edit_id: int, settings: Settings) -> DecisionResult | None:
    """Decide ``edit_id`` from its stored scores and write its ``Decision`` row (in ``session``'s
    transaction). Returns None when the edit has no scores yet."""
    edit = session.get(Edit, edit_id)
    if edit is None:
        return None
    metrics, errors = stored_scores(session, edit_id)
    if not metrics and not errors:
        return None
    recipe = recipe_of(session, edit)
    result = decide(metrics, errors, recipe, settings.score.thresholds_for(recipe))
    row = session.execute(select(Decision).where(Decision.edit_id == edit_id)).scalar_one_or_none()
    if row is None:
        row = Decision(edit_id=edit_id)
        session.add(row)
    row.decision, row.reasons, row.failed = result.decision, result.reasons, result.failed
    row.thresholds, row.margin, row.decided_at = result.thresholds, result.margin, utcnow()
    return result


#: edits decided per chunk of :func:`redecide_all`: one transaction of 3 reads and 1 write
REDECIDE_CHUNK = 2000
#: the largest chunk allowed: it bounds the memory one chunk's rows and scores take
MAX_CHUNK = 50_000


@dataclass
class RedecideReport:
    """What :func:`redecide_all` did; ``chunks`` were committed one by one."""

    decided: int = 0
    changed: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    chunks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"decided": self.decided, "changed": self.changed, "accepted": self.accepted,
                "rejected": self.rejected, "reasons": dict(sorted(self.reasons.items())), "chunks": self.chunks}


def _scores_by_edit(session: Session, lo: int, hi: int) -> dict[int, tuple[dict[str, dict[str, float]], dict[str, str]]]:
    """:func:`stored_scores` for every edit with ``lo <= id <= hi``, in one range read."""
    out: dict[int, tuple[dict[str, dict[str, float]], dict[str, str]]] = {}
    rows = session.execute(select(Score.edit_id, Score.scorer, Score.metrics, Score.error_code)
                           .where(Score.edit_id >= lo, Score.edit_id <= hi).order_by(Score.edit_id, Score.id))
    for edit_id, scorer, values, error_code in rows:
        metrics, errors = out.setdefault(edit_id, ({}, {}))
        if error_code:
            errors[scorer] = error_code
            continue
        try:
            metrics[scorer] = {k: float(v) for k, v in (values or {}).items() if v is not None}
        except (TypeError, ValueError):
            raise InputError(f"edit {edit_id}: the {scorer} score holds a metric that is not a number "
                             f"({values!r}); rescore it: synthpipe score --rescore --scorers {scorer}") from None
    return out


def scored_edits(db: Database) -> int:
    """How many edits have at least one stored score (what :func:`redecide_all` decides)."""
    with db.session() as s:
        return s.scalar(select(func.count(distinct(Score.edit_id)))) or 0


def _decide_chunk(session: Session, edit_ids: list[int], settings: Settings,
                  thresholds: dict[str, dict[str, float | None]], report: RedecideReport) -> None:
    """Decide the edits ``edit_ids`` (ascending) and write their decisions in one bulk write."""
    lo, hi = edit_ids[0], edit_ids[-1]
    scores = _scores_by_edit(session, lo, hi)
    edits = session.execute(
        select(Edit.id, ItemSet.recipe, Decision.decision)
        .outerjoin(ItemSet, ItemSet.id == Edit.item_set_id)
        .outerjoin(Decision, Decision.edit_id == Edit.id)
        .where(Edit.id >= lo, Edit.id <= hi)).all()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for edit_id, recipe, before in edits:
        if edit_id not in scores:  # an edit in the range with no score yet: not decided (as decide_edit)
            continue
        recipe = recipe if recipe is not None else "tryon"
        if recipe not in thresholds:
            thresholds[recipe] = settings.score.thresholds_for(recipe)
        metrics, errors = scores[edit_id]
        result = decide(metrics, errors, recipe, thresholds[recipe])
        rows.append({"edit_id": edit_id, "decision": result.decision, "reasons": result.reasons,
                     "failed": result.failed, "thresholds": result.thresholds, "margin": result.margin})
        report.decided += 1
        report.changed += before != result.decision
        report.accepted += result.decision == "accepted"
        report.rejected += result.decision == "rejected"
        for code in result.reasons:
            report.reasons[code] = report.reasons.get(code, 0) + 1
    if rows:
        _upsert_decisions(session, rows, now)


#: PostgreSQL: a chunk's decisions as one JSON document, unpacked and upserted by one statement
#: whatever the chunk's size (one parameter, not seven a row: nothing to compile per chunk)
_PG_UPSERT = text("""
INSERT INTO decisions (edit_id, decision, reasons, failed, thresholds, margin, decided_at)
SELECT r.edit_id, r.decision, r.reasons, r.failed, r.thresholds, r.margin, :decided_at
FROM json_to_recordset(CAST(:rows AS json))
     AS r(edit_id integer, decision varchar, reasons json, failed json, thresholds json, margin double precision)
ORDER BY r.edit_id  -- rows locked in id order: two runs at once never deadlock
ON CONFLICT (edit_id) DO UPDATE SET decision = EXCLUDED.decision, reasons = EXCLUDED.reasons,
    failed = EXCLUDED.failed, thresholds = EXCLUDED.thresholds, margin = EXCLUDED.margin,
    decided_at = EXCLUDED.decided_at
""")


def _upsert_decisions(session: Session, rows: list[dict[str, Any]], decided_at: dt.datetime) -> None:
    """Write ``rows`` (``edit_id``, ``decision``, ``reasons``, ``failed``, ``thresholds``, ``margin``)
    as the edits' decisions, inserted or updated: one statement on PostgreSQL, one executemany
    of a cached statement on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_PG_UPSERT, {"rows": json.dumps(rows), "decided_at": decided_at})
        return
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(Decision)
    stmt = stmt.on_conflict_do_update(index_elements=[Decision.edit_id], set_={
        name: stmt.excluded[name] for name in ("decision", "reasons", "failed", "thresholds", "margin", "decided_at")})
    session.execute(stmt, [{**row, "decided_at": decided_at} for row in rows])


def redecide_all(db: Database, settings: Settings, *, chunk: int = REDECIDE_CHUNK,
                 on_chunk: Callable[[int], None] | None = None) -> RedecideReport:
    """Re-decide every scored edit from its stored scores, the same as :func:`decide_edit` one by
    one, in chunks of ``chunk`` edits by ascending id, each in its own transaction: an interrupted
    run keeps the chunks it committed, holds row locks on one chunk's decisions at a time, and a
    rerun decides everything again (the same scores and thresholds give the same decisions).
    ``on_chunk(n)`` is called after each commit with the edits it decided."""
    if not 1 <= chunk <= MAX_CHUNK:
        raise ValueError(f"chunk: {chunk} edits; allowed 1 to {MAX_CHUNK}")
    report = RedecideReport()
    thresholds: dict[str, dict[str, float | None]] = {}
    last = 0
    while True:
        with db.session() as s:
            # keyset page over the scored edits: the (edit_id, scorer) unique index, in order
            edit_ids = list(s.execute(select(Score.edit_id).where(Score.edit_id > last).distinct()
                                      .order_by(Score.edit_id).limit(chunk)).scalars())
            if not edit_ids:
                break
            before = report.decided
            _decide_chunk(s, edit_ids, settings, thresholds, report)
        report.chunks += 1
        last = edit_ids[-1]
        if on_chunk is not None:
            on_chunk(report.decided - before)
    return report
