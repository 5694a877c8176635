"""The rows an export writes, read from the store in chunks: memory does not grow with the store.

Edits are read in windows of edit ids (``WHERE edits.id > lo AND edits.id <= lo + n``, the
same bounds repeated in the joins on ``decisions`` and ``review_edit_counts``, which PostgreSQL
does not carry over by itself: without them each chunk's join read those tables from the first
edit on, and a chunk deep in a 300k-edit store cost 10 to 40 times one at its start), in edit-id
order, so two exports of the same store write the same rows in the same order. The
decision filter runs in SQL: the final decision is the people's majority where they decided (from
``review_edit_counts``, kept by a trigger on ``reviews``), a tie is unresolved, and the AI's
decision stands otherwise (as :mod:`common.domain.final_decision` says); ``--min-confidence``
is a ``WHERE`` too. Scores, final decisions (tags, reviewers) and provenance are read per chunk.

Best-of-N: where an analysis has a ``selections`` row, only its effective winner (a person's
overrule, else the selection step's pick) counts as accepted; an accepted candidate that is not
the winner is exported as rejected with the reason ``selection.not_selected``
(:func:`common.domain.overrule.decision_with_selection`, the same rule in SQL:
:func:`selected_decision_sql`). Edits whose analysis has no selection keep their final decision.

Two passes: :func:`plan_rows` reads ids, confidences and score metrics only, to count the rows
(nothing is written when there are none), name the metric columns (every row has the same
schema, so they must be known before the first row is written) and find each metric's range
(the contact sheet's histograms bin values as they stream); :func:`iter_rows` then yields the
full records.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.domain.final_decision import FinalDecision, final_decisions
from common.domain.overrule import (
    NOT_SELECTED,
    decision_with_selection,
    rank_of,
    selections_for,
    winner_of,
)
from common.domain.selection import effective_selection
from common.store.db import Database
from common.store.rows import (
    Analysis,
    Decision,
    Edit,
    ItemSet,
    ItemSetAsset,
    Job,
    ReviewEditCount,
    Score,
    Selection,
)

#: every selection's effective winner, ``(analysis_id, edit_id)``; outer-joined to the candidates only
#: (an edit with no candidate number keeps its own decision, as :mod:`common.domain.selection` says)
WINNERS = effective_selection().subquery("winners")


def with_winners(query: Any) -> Any:
    """``query`` (over ``edits``) with :data:`WINNERS` outer-joined to the edits that are candidates."""
    return query.outerjoin(WINNERS, and_(WINNERS.c.analysis_id == Edit.analysis_id, Edit.candidate.is_not(None)))

DECISION_FILTERS = ("accepted", "rejected", "all")
UNSCORED = ""  # the decision column of an edit never scored (exported with --decision all only)
JUDGE = "judge"
CHUNK = 500  # edits read per query

#: the columns of every row besides the metrics (the ``*_uri(s)`` keys are the images')
BASE_COLUMNS = (
    "input_uri", "edited_uri", "garment_uris", "edit_id", "origin", "edit_prompt", "decision", "reasons",
    "failed_checks", "judge", "scores", "negative_prompt", "recipe", "confidence", "feasibility", "analysis",
    "keywords", "variation", "provenance", "source_urls", "page_urls", "source_paths", "sites", "categories",
    "licences", "found_via", "input_sha256", "edited_sha256", "vl_backend", "vl_model", "vl_params",
    "prompt_version", "schema_version", "edit_backend", "edit_model", "edit_params", "seed", "item_set_key",
    "vl_job_key", "ai_decision", "review_decision", "review_tags", "reviewers", "candidate", "selection",
    "selection_rank", "selection_by", "selection_why", "selection_note",
)
SELECTED, PASSED_OVER = "selected", "not_selected"  # the ``selection`` column; "" where the set has no selection


@dataclass
class RowPlan:
    """What the first pass learnt: how many rows, the metric columns and their value ranges."""

    rows: int = 0
    filtered: int = 0  # how many the confidence filter dropped
    columns: dict[tuple[str, str], str] = field(default_factory=dict)  # (scorer, metric) -> column name
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (min, max) of its values

    @property
    def metrics(self) -> list[str]:
        return list(self.columns.values())


def final_decision_sql() -> Any:
    """The final decision as a SQL expression (outer-joined ``decisions`` and ``review_edit_counts``):
    people's majority where any current decision exists, NULL for their tie, the AI's otherwise."""
    c = ReviewEditCount
    return case((c.accepted > c.rejected, "accepted"), (c.rejected > c.accepted, "rejected"),
                (c.accepted + c.rejected > 0, null()), else_=Decision.decision)


def selected_decision_sql() -> Any:
    """The decision export goes by, as SQL (:func:`with_winners` joined too): the final decision, except
    that an accepted candidate which is not its analysis's effective winner is rejected."""
    final = final_decision_sql()
    winner = WINNERS.c.edit_id
    passed_over = and_(WINNERS.c.analysis_id.is_not(None), or_(winner.is_(None), winner != Edit.id))
    return case((and_(final == "accepted", passed_over), "rejected"), else_=final)


def _chosen(query: Any, decision: str, recipe: str | None = None, window: tuple[int, int] | None = None) -> Any:
    """``query`` (over ``edits``) with the decision columns joined and the ``decision`` filter; with
    ``window`` = (lo, hi) only edits lo < id <= hi, the bounds on every join as well."""
    on_decision, on_counts = Decision.edit_id == Edit.id, ReviewEditCount.edit_id == Edit.id
    if window is not None:
        lo, hi = window
        query = query.where(Edit.id > lo, Edit.id <= hi)
        on_decision = and_(on_decision, Decision.edit_id > lo, Decision.edit_id <= hi)
        on_counts = and_(on_counts, ReviewEditCount.edit_id > lo, ReviewEditCount.edit_id <= hi)
    query = with_winners(query.outerjoin(Decision, on_decision).outerjoin(ReviewEditCount, on_counts))
    if recipe is not None:  # ``--recipe``: the edits of that recipe's item sets only
        query = query.where(Edit.item_set_id.in_(select(ItemSet.id).where(ItemSet.recipe == recipe)))
    return query if decision == "all" else query.where(selected_decision_sql() == decision)


def _check(decision: str) -> None:
    if decision not in DECISION_FILTERS:
        raise InputError(f"unknown decision {decision!r} (allowed: {', '.join(DECISION_FILTERS)})")


def _windows(s: Session, width: int) -> Iterator[tuple[int, int]]:
    """(lo, hi] windows of ``width`` edit ids covering every edit, in order."""
    first, last = s.execute(select(func.min(Edit.id), func.max(Edit.id))).one()
    if first is None:
        return
    lo = first - 1
    while lo < last:
        yield lo, lo + width
        lo += width


def plan_rows(db: Database, *, decision: str = "accepted", min_confidence: float | None = None,
              recipe: str | None = None) -> RowPlan:
    """The first pass (see the module's docstring)."""
    _check(decision)
    plan = RowPlan()
    pairs: set[tuple[str, str]] = set()
    ranges: dict[tuple[str, str], tuple[float, float]] = {}
    with db.session() as s:
        for window in _windows(s, CHUNK):
            q = _chosen(select(Edit.id, Analysis.id, Analysis.confidence)
                        .outerjoin(Analysis, Edit.analysis_id == Analysis.id), decision, recipe, window)
            chunk = s.execute(q.order_by(Edit.id)).all()
            if not chunk:
                continue
            ids = []
            for edit_id, analysis_id, confidence in chunk:
                if min_confidence is not None and (analysis_id is None or confidence < min_confidence):
                    plan.filtered += 1
                else:
                    ids.append(edit_id)
            plan.rows += len(ids)
            for scorer, metrics in s.execute(select(Score.scorer, Score.metrics).where(Score.edit_id.in_(ids))):
                for name, value in (metrics or {}).items():
                    pair = (scorer, name)
                    pairs.add(pair)
                    number = _number(value)
                    if number is not None and math.isfinite(number):
                        lo, hi = ranges.get(pair, (number, number))
                        ranges[pair] = (min(lo, number), max(hi, number))
            s.expunge_all()
    plan.columns = metric_columns(pairs)
    plan.ranges = {plan.columns[p]: r for p, r in ranges.items()}
    return plan


def iter_rows(db: Database, columns: dict[tuple[str, str], str], *, decision: str = "accepted",
              min_confidence: float | None = None, chunk: int = CHUNK,
              recipe: str | None = None) -> Iterator[dict[str, Any]]:
    """The chosen edits as records, in edit-id order, with URIs for their images and one column
    per metric of ``columns`` (a metric not in it, scored after :func:`plan_rows`, is left out)."""
    _check(decision)
    with db.session() as s:
        for window in _windows(s, chunk):
            q = _chosen(select(Edit, ItemSet, Analysis, Job, Decision)
                        .join(ItemSet, Edit.item_set_id == ItemSet.id)
                        .outerjoin(Analysis, Edit.analysis_id == Analysis.id)
                        .outerjoin(Job, Analysis.job_id == Job.id), decision, recipe, window)
            if min_confidence is not None:
                q = q.where(Analysis.confidence >= min_confidence)
            found = s.execute(q.order_by(Edit.id)).all()
            if not found:
                continue
            rows = list(_records(s, found, columns, decision))
            s.expunge_all()  # the session's identity map holds one chunk, never the store
            yield from rows


def _records(s: Session, found: Sequence[Any], columns: dict[tuple[str, str], str],
             decision: str) -> Iterator[dict[str, Any]]:
    ids = [edit.id for edit, *_ in found]
    finals = final_decisions(s, ids)  # tags and reviewers of this chunk's reviewed edits
    selections = selections_for(s, [edit.analysis_id for edit, *_ in found if edit.candidate is not None])
    scores: dict[int, list[Score]] = {}
    for score in s.scalars(select(Score).where(Score.edit_id.in_(ids)).order_by(Score.edit_id, Score.scorer)):
        scores.setdefault(score.edit_id, []).append(score)
    for edit, item, analysis, vl_job, dec in found:
        final = finals.get(edit.id)
        selection = selections.get(edit.analysis_id) if edit.analysis_id is not None and edit.candidate is not None \
            else None  # an edit with no candidate number keeps its own decision
        if decision != "all" and decision_with_selection(final.decision if final else None, edit.id,
                                                         selection) != decision:
            continue  # reviewed (or the selection overruled) between the query and now
        row = _row(edit, item, analysis, vl_job, dec, scores.get(edit.id, []))
        row.update(_review_columns(final, dec))
        row.update(_selection_columns(edit, selection, row))
        values = row.pop("_metrics")
        for pair, name in columns.items():
            row[name] = _number(values.get(pair))
        yield row


def _review_columns(final: FinalDecision | None, dec: Decision | None) -> dict[str, Any]:
    """``decision`` becomes the final one (people's majority where reviewed, else the AI's; a tie is
    "unresolved"); ``ai_decision`` keeps the AI's, ``review_*`` and ``reviewers`` the people's."""
    ai = dec.decision if dec else UNSCORED
    if final is None:  # an edit that arrived after the final decisions were read
        return {"ai_decision": ai, "review_decision": "", "review_tags": [], "reviewers": []}
    tie = final.source == "tie"
    return {"decision": final.decision or ("unresolved" if tie else UNSCORED), "ai_decision": ai,
            "review_decision": final.review_decision or ("tie" if tie else ""),
            "review_tags": list(final.review_tags), "reviewers": list(final.reviewers)}


def _selection_columns(edit: Edit, selection: Selection | None, row: dict[str, Any]) -> dict[str, Any]:
    """The candidate number and, where its analysis has a selection, whether it is the effective winner,
    its rank, who picked (``selection`` or ``person``) and why; an accepted candidate that is not the
    winner becomes rejected with the reason :data:`NOT_SELECTED`."""
    out: dict[str, Any] = {"candidate": edit.candidate, "selection": "", "selection_rank": None,
                           "selection_by": "", "selection_why": "", "selection_note": ""}
    if selection is None:
        return out
    selected = winner_of(selection) == edit.id
    out.update(selection=SELECTED if selected else PASSED_OVER, selection_rank=rank_of(selection, edit.id),
               selection_by="person" if selection.person_edit_id is not None else "selection",
               selection_why=selection.why, selection_note=selection.person_note or "")
    if not selected and row["decision"] == "accepted":
        out.update(decision="rejected", reasons=[*row["reasons"], NOT_SELECTED])
    return out


def _row(edit: Edit, item: ItemSet, analysis: Analysis | None, vl_job: Job | None, dec: Decision | None,
         scores: list[Score]) -> dict[str, Any]:
    members = [m.asset for m in item.members]
    primary = members[0]
    garments = [m.asset for m in item.members if m.role == "garment"]
    judge = next((sc for sc in scores if sc.scorer == JUDGE), None)
    return {
        "input_uri": primary.uri, "edited_uri": edit.output_uri, "garment_uris": [g.uri for g in garments],
        "edit_id": edit.id,
        "origin": edit.origin,
        "edit_prompt": edit.edit_prompt or (analysis.edit_prompt if analysis else ""),
        "decision": dec.decision if dec else UNSCORED,
        "reasons": [str(r) for r in (dec.reasons if dec else [])],
        "failed_checks": json.dumps(dec.failed if dec else {}, sort_keys=True),
        "judge": _judge_json(judge),
        "scores": json.dumps({sc.scorer: {"metrics": sc.metrics, "error_code": sc.error_code}
                              for sc in scores}, sort_keys=True),
        "_metrics": {(sc.scorer, k): v for sc in scores for k, v in (sc.metrics or {}).items()},
        "negative_prompt": (analysis.negative_prompt or "") if analysis else "",
        "recipe": item.recipe,
        "confidence": float(analysis.confidence) if analysis else None,
        "feasibility": analysis.feasibility if analysis else "",
        "analysis": json.dumps(analysis.data if analysis else {}, sort_keys=True),
        "keywords": json.dumps(item.keywords or {}, sort_keys=True),
        "variation": json.dumps(item.variation or {}, sort_keys=True),
        "provenance": json.dumps(edit.provenance or {}, sort_keys=True),
        "source_urls": [a.source_url or "" for a in members],
        "page_urls": [a.page_url or "" for a in members],
        "source_paths": [a.source_path or "" for a in members],
        "sites": [a.site or "" for a in members],
        "categories": [a.category or "" for a in members],
        "licences": [a.licence or "" for a in members],
        "found_via": [a.found_via or "" for a in members],
        "input_sha256": primary.sha256,
        "edited_sha256": edit.output_sha256,
        "vl_backend": analysis.backend if analysis else "", "vl_model": analysis.model_id if analysis else "",
        "vl_params": json.dumps(analysis.params if analysis else {}, sort_keys=True),
        "prompt_version": analysis.prompt_version if analysis else "",
        "schema_version": analysis.schema_version if analysis else "",
        "edit_backend": edit.backend, "edit_model": edit.model_id,
        "edit_params": json.dumps(edit.params, sort_keys=True),
        "seed": int(edit.seed),
        "item_set_key": item.key, "vl_job_key": vl_job.key if vl_job else "",
    }


def _judge_json(judge: Score | None) -> str:
    """The judge's verdict (its ``details``), or its recorded failure; "" where no judge ran."""
    if judge is None:
        return ""
    if judge.error_code:
        return json.dumps({"error": {"code": judge.error_code, "message": judge.error_message or ""}},
                          sort_keys=True)
    return json.dumps(judge.details or {}, sort_keys=True)


def metric_columns(pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Column name of each (scorer, metric): the metric's own name, or ``<scorer>_<metric>`` where
    two scorers share a name or it would shadow another column."""
    ordered = sorted(pairs)
    named = Counter(m for _, m in ordered)
    return {(sc, m): (m if named[m] == 1 and m not in BASE_COLUMNS else f"{sc}_{m}") for sc, m in ordered}


def _number(value: Any) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def recipe_controls(db: Database, *, decision: str = "accepted", min_confidence: float | None = None,
                    recipe: str | None = None) -> dict[str, int]:
    """``recipe -> the most control images one of its chosen edits has`` (the person and every
    garment): the trainer layouts name their per-recipe folders and configs before the first row."""
    _check(decision)
    garments = (select(ItemSetAsset.item_set_id, func.count().label("n")).where(ItemSetAsset.role == "garment")
                .group_by(ItemSetAsset.item_set_id).subquery())
    q = _chosen(select(ItemSet.recipe, func.max(func.coalesce(garments.c.n, 0))).select_from(Edit)
                .join(ItemSet, Edit.item_set_id == ItemSet.id)
                .outerjoin(garments, garments.c.item_set_id == Edit.item_set_id), decision, recipe)
    if min_confidence is not None:
        q = q.outerjoin(Analysis, Edit.analysis_id == Analysis.id).where(Analysis.confidence >= min_confidence)
    with db.session() as s:
        return {recipe: 1 + int(n or 0) for recipe, n in s.execute(q.group_by(ItemSet.recipe).order_by(ItemSet.recipe))}


def _pair_ids(s: Session, item_sets: list[int], min_confidence: float | None,
              recipe: str | None = None) -> list[tuple[int, int]]:
    """(chosen id, rejected id) pairs of the edits of ``item_sets``, by the decision export goes by
    (:func:`selected_decision_sql`). The candidates of an analysis with a selection make one group: its
    effective winner (when accepted) with each other decided candidate. Every other edit groups by item
    set and instruction, as before best-of-N: every accepted one with every rejected one. Ordered by item
    set, group and ids."""
    decided = selected_decision_sql()
    prompt = func.coalesce(Edit.edit_prompt, Analysis.edit_prompt, "")
    q = _chosen(select(Edit.id, Edit.item_set_id, prompt, decided, WINNERS.c.analysis_id)
                .outerjoin(Analysis, Edit.analysis_id == Analysis.id),
                "all", recipe).where(Edit.item_set_id.in_(item_sets), decided.in_(("accepted", "rejected")))
    if min_confidence is not None:
        q = q.where(Analysis.confidence >= min_confidence)
    groups: dict[tuple[int, int, int, str], dict[str, list[int]]] = {}
    for edit_id, item_set_id, text, decision, selected_set in s.execute(q.order_by(Edit.item_set_id, Edit.id)):
        key = (item_set_id, 0, 0, text) if selected_set is None else (item_set_id, 1, selected_set, "")
        groups.setdefault(key, {"accepted": [], "rejected": []})[decision].append(edit_id)
    return [(a, r) for key in sorted(groups) for a in groups[key]["accepted"] for r in groups[key]["rejected"]]


def iter_pairs(db: Database, columns: dict[tuple[str, str], str], *, min_confidence: float | None = None,
               chunk: int = CHUNK, ids_only: bool = False, recipe: str | None = None) -> Iterator[tuple[Any, Any]]:
    """Preference pairs: (chosen row, rejected row) for every input (item set) and instruction that has
    a finally accepted and a finally rejected edit, every accepted one with every rejected one; for an
    analysis with a selection, its selected edit with each other candidate (:func:`_pair_ids`). Read in
    chunks of ``chunk`` item sets (keyset on the item set id): memory holds one chunk's edits.
    ``ids_only`` yields the two edit ids instead of the rows (to count the pairs)."""
    last = 0
    with db.session() as s:
        while True:
            sets = list(s.scalars(select(Edit.item_set_id).where(Edit.item_set_id > last).group_by(Edit.item_set_id)
                                  .order_by(Edit.item_set_id).limit(chunk)))
            if not sets:
                return
            last = sets[-1]
            pairs = _pair_ids(s, sets, min_confidence, recipe)
            if ids_only or not pairs:
                yield from pairs
                continue
            ids = sorted({i for pair in pairs for i in pair})
            found = s.execute(select(Edit, ItemSet, Analysis, Job, Decision)
                              .join(ItemSet, Edit.item_set_id == ItemSet.id)
                              .outerjoin(Analysis, Edit.analysis_id == Analysis.id)
                              .outerjoin(Job, Analysis.job_id == Job.id)
                              .outerjoin(Decision, Decision.edit_id == Edit.id)
                              .where(Edit.id.in_(ids)).order_by(Edit.id)).all()
            rows = {row["edit_id"]: row for row in _records(s, found, columns, "all")}
            s.expunge_all()
            yield from ((rows[a], rows[r]) for a, r in pairs if a in rows and r in rows)
