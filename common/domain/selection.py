"""Best-of-N selection: the winner among an analysis's candidate edits, with the ranking and why.

**The rule** (named on every row as ``rule``, e.g. ``accepted>judge.judge_overall>margin>candidate``),
over the candidates that have a decision:

1. accepted before rejected (the AI's decision, :mod:`common.domain.decide`);
2. then the key metric ``edit.select_by`` (default ``judge.judge_overall``, the VLM judge's
   overall score), higher first (lower first when it starts with ``-``); a candidate without it
   (the judge off, or failed on it) comes after those with it. ``margin`` skips this step;
3. then the decision's margin, larger first (the more certain decision); none last;
4. then the candidate number, then the edit id (a stable order).

The first is the winner (``edit_id``), also when nothing was accepted: then the set gives no
accepted edit and ``why`` says so.

**When.** :func:`select_for_analysis` runs in the score job's transaction each time a candidate
is decided, so a set's selection is the best of its candidates scored so far and is final when
the last is scored (``candidates``: those scored; ``expected``: the N planned; fewer are made when
one failed, the set stopped early or the run's budget was spent). It first locks the analysis
row, so two candidates decided at once (two workers) are selected one after the other, the second
seeing the first's decision; the row's key is the analysis, so a retried or recovered score job
updates the one row. Only best-of-N sets are selected (planned with several candidates, or with
an ensemble's backend, :func:`common.domain.editplan.best_of_n_payload`): a plain N = 1 edit gets
no row and keeps today's meaning. :func:`reselect_all` (``synthpipe score --redecide``, after the
bulk re-decision) selects every selected set again from the stored decisions and scores, in
committed chunks, no model loaded. Neither ever writes a person's overrule (``person_*``, the
review side's).

**For readers** (export, review, training data). The effective winner of an analysis is
``COALESCE(person_edit_id, edit_id)``: :func:`effective_selection` is that as a SELECT of
``(analysis_id, edit_id)``; :func:`passed_over` selects the ids of the candidates a selection
did not pick (an accepted one among them is not training data). Edits that are no candidate
(``edits.candidate`` NULL: imported, made before best-of-N, a flywheel's held-out edits) and
candidates of an analysis with no selection row keep today's meaning.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from common.store.rows import Analysis, Decision, Edit, Job, Score, Selection, utcnow

if TYPE_CHECKING:
    from common.core.settings import Settings
    from common.store.db import Database

#: analyses selected per committed chunk of :func:`reselect_all`
RESELECT_CHUNK = 2000


@dataclass(frozen=True)
class SelectKey:
    """The metric that ranks candidates after acceptance (``edit.select_by``)."""

    text: str
    scorer: str | None = None  # None: margin alone
    metric: str | None = None
    lower_is_better: bool = False

    @classmethod
    def parse(cls, text: str) -> SelectKey:
        if text == "margin":
            return cls(text)
        scorer, _, metric = text.removeprefix("-").partition(".")
        return cls(text, scorer, metric, text.startswith("-"))

    @property
    def rule(self) -> str:
        """The rule's name, stored on every selection."""
        return "accepted>margin>candidate" if self.scorer is None else f"accepted>{self.text}>margin>candidate"


@dataclass(frozen=True)
class CandidateRow:
    """One decided candidate, as the rule sees it."""

    edit_id: int
    candidate: int
    backend: str
    seed: int
    decision: str
    reasons: tuple[str, ...] = ()
    margin: float | None = None
    value: float | None = None  # the key metric; None: not computed


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def rank_candidates(candidates: Iterable[CandidateRow], key: SelectKey) -> list[CandidateRow]:
    """The candidates best first, by the rule in this module's docstring."""

    def order(c: CandidateRow) -> tuple[Any, ...]:
        value = _number(c.value) if key.scorer is not None else None
        by_value = (1, 0.0) if value is None else (0, value if key.lower_is_better else -value)
        margin = _number(c.margin)
        by_margin = (1, 0.0) if margin is None else (0, -margin)
        return (c.decision != "accepted", *by_value, *by_margin, c.candidate, c.edit_id)

    return sorted(candidates, key=order)


def ranking_rows(ranked: list[CandidateRow], key: SelectKey) -> list[dict[str, Any]]:
    """The ``ranking`` column: one entry per candidate, best first."""
    return [{"rank": r, "edit_id": c.edit_id, "candidate": c.candidate, "backend": c.backend, "seed": c.seed,
             "decision": c.decision, "reasons": list(c.reasons), "key": key.text if key.scorer else None,
             "value": c.value if key.scorer else None, "margin": c.margin} for r, c in enumerate(ranked, 1)]


def explain(ranked: list[CandidateRow], key: SelectKey, expected: int) -> str:
    """Why the first of ``ranked`` won, for people."""
    best = ranked[0]
    accepted = sum(c.decision == "accepted" for c in ranked)
    by = f"{key.text} {best.value:g}, " if key.scorer and best.value is not None else ""
    margin = f"margin {best.margin:g}" if best.margin is not None else "no margin"
    who = f"edit {best.edit_id} (candidate {best.candidate}, {best.backend})"
    if accepted:
        head = f"{who} accepted with {by}{margin}"
        if accepted > 1:
            head += f"; the best of {accepted} accepted by {key.rule.removeprefix('accepted>')}"
    else:
        head = f"no candidate accepted; {who} ranked first ({', '.join(best.reasons) or 'rejected'}; {by}{margin})"
    tail = f"{len(ranked)} of {expected} candidates scored"
    return f"{head}; {tail}"


# --- the store side ------------------------------------------------------------------------


@dataclass
class _SetView:
    item_set_id: int
    expected: int = 0
    made: int = 0
    decided: list[CandidateRow] = field(default_factory=list)


def _in_range(session: Session, query: Any, column: Any, ids: list[int]) -> list[Any]:
    """``query``'s rows with ``column`` within the range of ``ids`` (one index range read: a join on
    ``column`` lets the planner scan the whole table once per chunk instead)."""
    if not ids:
        return []
    return list(session.execute(query.where(column >= min(ids), column <= max(ids))))


def _read(session: Session, where: list[Any], key: SelectKey) -> dict[int, _SetView]:
    """The candidates of the analyses matching ``where`` (conditions on ``Edit``), by analysis.

    The edits first, then their decisions, planned counts and key metric each by a range of ids
    (a chunk's edits, and so their jobs, are close together), so the cost of a chunk does not
    grow with the store."""
    edits = session.execute(
        select(Edit.id, Edit.analysis_id, Edit.item_set_id, Edit.candidate, Edit.backend, Edit.seed, Edit.job_id)
        .where(Edit.candidate.is_not(None), Edit.analysis_id.is_not(None), *where)
        .order_by(Edit.analysis_id, Edit.candidate, Edit.id)).all()
    ids = [r[0] for r in edits]
    wanted = set(ids)
    decisions = {r[0]: r[1:] for r in _in_range(
        session, select(Decision.edit_id, Decision.decision, Decision.reasons, Decision.margin), Decision.edit_id, ids)
        if r[0] in wanted}
    job_ids = [r[6] for r in edits if r[6] is not None]
    planned = dict(_in_range(session, select(Job.id, Job.payload["candidates"].as_integer()), Job.id, job_ids))
    values: dict[int, float | None] = {}
    decided_ids = [i for i in ids if i in decisions]
    if key.scorer is not None and decided_ids:
        metric = select(Score.edit_id, Score.metrics).where(Score.scorer == key.scorer, Score.error_code.is_(None))
        values = {edit_id: _number((metrics or {}).get(key.metric))  # a value that is no number counts as none
                  for edit_id, metrics in _in_range(session, metric, Score.edit_id, decided_ids)}
    out: dict[int, _SetView] = {}
    for edit_id, analysis_id, item_set_id, k, backend, seed, job_id in edits:
        assert analysis_id is not None and k is not None  # the query's conditions
        view = out.setdefault(analysis_id, _SetView(item_set_id))
        view.made += 1
        view.expected = max(view.expected, int(planned.get(job_id) or 0), view.made)
        if edit_id in decisions:
            decision, reasons, margin = decisions[edit_id]
            view.decided.append(CandidateRow(edit_id, int(k), backend, int(seed), decision, tuple(reasons or ()),
                                             _number(margin), values.get(edit_id)))
    return out


def _row(analysis_id: int, view: _SetView, key: SelectKey, now: dt.datetime) -> dict[str, Any]:
    ranked = rank_candidates(view.decided, key)
    return {"analysis_id": analysis_id, "item_set_id": view.item_set_id, "edit_id": ranked[0].edit_id,
            "ranking": ranking_rows(ranked, key), "rule": key.rule, "why": explain(ranked, key, view.expected),
            "candidates": len(ranked), "expected": view.expected, "selected_at": now}


#: what a selection step writes; the person's columns are never among them
WRITTEN = ("item_set_id", "edit_id", "ranking", "rule", "why", "candidates", "expected", "selected_at")


def _upsert(session: Session, rows: list[dict[str, Any]]) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Selection)
    stmt = stmt.on_conflict_do_update(index_elements=[Selection.analysis_id],
                                      set_={name: stmt.excluded[name] for name in WRITTEN})
    session.execute(stmt, rows)


def select_for_analysis(session: Session, analysis_id: int, settings: Settings) -> dict[str, Any] | None:
    """Select the winner of ``analysis_id``'s candidates from their stored decisions and write its
    ``selections`` row (in ``session``'s transaction); returns the row written, or None when no
    candidate of it is decided yet."""
    session.flush()
    key = SelectKey.parse(settings.edit.select_by)
    # serialise the sets' selections: a concurrent one commits first, and the read below sees it
    session.execute(select(Analysis.id).where(Analysis.id == analysis_id).with_for_update())
    view = _read(session, [Edit.analysis_id == analysis_id], key).get(analysis_id)
    if view is None or not view.decided:
        return None
    row = _row(analysis_id, view, key, utcnow())
    _upsert(session, [row])
    return row


@dataclass
class ReselectReport:
    """What :func:`reselect_all` did; ``chunks`` were committed one by one."""

    sets: int = 0
    changed: int = 0  # sets whose winner changed
    chunks: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sets": self.sets, "changed": self.changed, "chunks": self.chunks}


def reselect_all(db: Database, settings: Settings, *, chunk: int = RESELECT_CHUNK) -> ReselectReport:
    """Select again every analysis that has a selection, from its stored decisions and scores (no
    model), in chunks of ``chunk`` analyses by ascending id, each in its own transaction. Sets
    that were never selected (plain N = 1 edits) stay so."""
    if chunk < 1:
        raise ValueError(f"chunk: {chunk}; at least 1")
    key = SelectKey.parse(settings.edit.select_by)
    report = ReselectReport()
    last = 0
    while True:
        with db.session() as s:
            ids = list(s.scalars(select(Selection.analysis_id).where(Selection.analysis_id > last)
                                 .order_by(Selection.analysis_id).limit(chunk)))
            if not ids:
                break
            lo, hi = ids[0], ids[-1]
            s.execute(select(Analysis.id).where(Analysis.id.in_(ids)).order_by(Analysis.id).with_for_update())
            before = dict(s.execute(select(Selection.analysis_id, Selection.edit_id)
                                    .where(Selection.analysis_id >= lo, Selection.analysis_id <= hi)).all())
            now = utcnow()
            rows = [_row(a, view, key, now) for a, view in
                    _read(s, [Edit.analysis_id >= lo, Edit.analysis_id <= hi], key).items()
                    if view.decided and a in before]
            if rows:
                _upsert(s, rows)
            report.sets += len(rows)
            report.changed += sum(before.get(r["analysis_id"]) != r["edit_id"] for r in rows)
        report.chunks += 1
        last = ids[-1]
    return report


# --- for readers ---------------------------------------------------------------------------


def effective_selection() -> Select[int, int]:
    """``SELECT analysis_id, edit_id`` of every selection, ``edit_id`` being the effective winner:
    a person's overrule, else the selection step's pick (use it as a subquery or CTE)."""
    return select(Selection.analysis_id.label("analysis_id"),
                  func.coalesce(Selection.person_edit_id, Selection.edit_id).label("edit_id"))


def passed_over() -> Select[int]:
    """``SELECT edits.id`` of every candidate its analysis's selection did not pick (effective
    winner: a person's overrule, else the step's). Edits that are no candidate never appear."""
    return (select(Edit.id).join(Selection, Selection.analysis_id == Edit.analysis_id)
            .where(Edit.candidate.is_not(None),
                   Edit.id != func.coalesce(Selection.person_edit_id, Selection.edit_id)))


def summary(session: Session, since: dt.datetime | None = None) -> dict[str, Any]:
    """Best-of-N over the selections written since ``since`` (all without it): sets, candidates
    scored, accepted candidates per set, and acceptance of candidate 0 alone (what N = 1 makes:
    the same key, seed and backend) against the set's winner (best-of-N)."""
    stmt = select(Selection.ranking, Selection.expected)
    if since is not None:
        stmt = stmt.where(Selection.selected_at >= since)
    sets = scored = expected = with_accepted = 0
    per_set: Counter[int] = Counter()
    paired = Counter[str]()  # over the sets whose candidate 0 was scored: the same sets both ways
    for ranking, planned in session.execute(stmt):
        sets += 1
        expected += int(planned or 0)
        scored += len(ranking)
        accepted = sum(r.get("decision") == "accepted" for r in ranking)
        per_set[accepted] += 1
        with_accepted += accepted > 0
        first = [r for r in ranking if r.get("candidate") == 0]
        if first:
            paired["sets"] += 1
            paired["first"] += first[0].get("decision") == "accepted"
            paired["best"] += accepted > 0

    def share(n: int, of: int) -> float | None:
        return round(n / of, 4) if of else None

    alone, best = share(paired["first"], paired["sets"]), share(paired["best"], paired["sets"])
    return {"sets": sets, "candidates_expected": expected, "candidates_scored": scored,
            "sets_with_accepted": with_accepted,
            "accepted_per_set": {"mean": share(sum(k * n for k, n in per_set.items()), sets),
                                 "histogram": {str(k): per_set[k] for k in sorted(per_set)}},
            "acceptance_candidate0": alone, "acceptance_best_of_n": best,
            "gain_over_n1": None if alone is None or best is None else round(best - alone, 4)}
