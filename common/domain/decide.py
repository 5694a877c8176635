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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.store.rows import Decision, Edit, ItemSet, Score, utcnow

if TYPE_CHECKING:
    from common.core.settings import Settings


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


def redecide_all(session: Session, settings: Settings) -> dict[str, Any]:
    """Re-decide every scored edit from stored scores; returns counts before and after."""
    before = dict(session.execute(select(Decision.edit_id, Decision.decision)).all())
    edit_ids = sorted(set(session.execute(select(Score.edit_id).distinct()).scalars()))
    after: dict[int, str] = {}
    reasons: dict[str, int] = {}
    for edit_id in edit_ids:
        result = decide_edit(session, edit_id, settings)
        if result is None:
            continue
        after[edit_id] = result.decision
        for code in result.reasons:
            reasons[code] = reasons.get(code, 0) + 1
    changed = sum(1 for k, v in after.items() if before.get(k) != v)
    return {
        "decided": len(after),
        "changed": changed,
        "accepted": sum(1 for v in after.values() if v == "accepted"),
        "rejected": sum(1 for v in after.values() if v == "rejected"),
        "reasons": dict(sorted(reasons.items())),
    }
