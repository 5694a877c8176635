"""The score stage: an edit -> every chosen scorer's metrics -> stored scores -> a decision.

``process_batch`` is the stage function the local runner and the Celery worker both call. Each
job names one edit (``{"edit_id": …}``, optionally ``"scorers": [...]`` for a rescore). The
scorers run batched, each over every job of the batch that asks for it, and stay resident
between batches. Scores are written once per (edit, scorer), replacing that scorer's earlier
row; the decision is then made from *all* stored scores of the edit (``common.domain.decide``), so a
rescore of one scorer keeps the others'. A scorer's error on one item is stored as that
scorer's result (and decides ``score_failed``/``judge_failed``); a transient one (out of
memory, say) sends the job back for another attempt instead. A best-of-N candidate's decision
then applies its set's early-stop rule (``common.domain.editplan``) and selects the set's winner
so far (``common.domain.selection``), in the same transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.backends import SCORERS, vl_backend_options
from common.core.errors import ErrorKind, ImageRejected, InputError, TransientError
from common.core.settings import Settings
from common.domain.decide import decide_edit
from common.domain.editplan import after_decision, best_of_n_payload
from common.domain.itemsets import ItemSetView, load_member_images, read_item_set
from common.domain.scoring import ScoreItem, ScoreOutput
from common.domain.selection import select_for_analysis
from common.media.images import load_image
from common.runtime.resident import on_device
from common.runtime.runner import StageContext
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import Analysis, Edit, Score, utcnow
from worker_score.backends import get_scorer

log = logging.getLogger(__name__)


def scorer_options(name: str, settings: Settings) -> dict[str, Any]:
    """Everything that configures scorer ``name``; part of its residency key."""
    s = settings.score
    model: dict[str, Any] = {"device": s.device, "max_batch": s.batch_size}
    faces: dict[str, Any] = {"upsample": s.face_upsample, "max_side": s.face_max_side}
    options: dict[str, dict[str, Any]] = {
        "change": {"side": s.change_side},
        "identity": faces,
        "clip": {"model": s.clip_model, "source_caption": s.clip_source_caption, **model},
        "dino": {"model": s.dino_model, **model},
        "garment": {"model": s.garment_model or s.dino_model, **model, **faces},
        "judge": judge_options(settings),
    }
    return options.get(name, {})


def judge_options(settings: Settings) -> dict[str, Any]:
    """The judge runs on the VL backend with the VL stage's options (so, with the same model, the
    two share one resident copy, or one served model's connections); only the checkpoint may
    differ (``score.judge_model``)."""
    vl = settings.vl
    return {"backend": vl.backend, **vl_backend_options(settings, settings.score.judge_model), "max_batch": vl.batch_size}


#: scorers that hold their model through the device manager themselves (the judge takes the VL
#: stage's resident backend): built afresh for every batch, which costs nothing
SELF_RESIDENT = frozenset({"judge"})


class ScorerSet:
    """The other scorers, loaded and unloaded together, so a device manager that holds one model
    at a time keeps all of them resident between batches."""

    def __init__(self, names: tuple[str, ...], settings: Settings) -> None:
        self.scorers = {n: get_scorer(n, **scorer_options(n, settings)) for n in names}

    def load(self) -> None:
        for scorer in self.scorers.values():
            scorer.load()

    def unload(self) -> None:
        for scorer in self.scorers.values():
            scorer.unload()


def scorer_groups(names: list[str], settings: Settings) -> list[tuple[str, ...]]:
    """The order scorers run in: the :class:`ScorerSet` ones together, then each self-resident
    one (last, so on a card that holds one model at a time its model is the one left loaded)."""
    own = tuple(sorted(n for n in names if n not in SELF_RESIDENT))
    return ([own] if own else []) + [(n,) for n in sorted(set(names) & SELF_RESIDENT)]


def loaded_scorers(group: tuple[str, ...], settings: Settings) -> dict[str, Any]:
    """The scorers of ``group``, loaded (and, for a :class:`ScorerSet`, kept resident on
    ``score.device``). Asked for right before they run: loading the next group may unload them."""
    if len(group) == 1 and group[0] in SELF_RESIDENT:
        scorer = get_scorer(group[0], **scorer_options(group[0], settings), settings=settings)
        scorer.load()
        return {group[0]: scorer}
    key = ("score", *((n, *sorted(scorer_options(n, settings).items())) for n in group))
    held = on_device(settings.score.device, settings).get(key, lambda: ScorerSet(group, settings),
                                                          label=f"scorers {','.join(group)}")
    return dict(held.scorers)


@dataclass
class _Prepared:
    job: ClaimedJob
    edit_id: int
    view: ItemSetView
    item: ScoreItem
    scorers: list[str]


def process_batch(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    """Score each job's edit with its scorers and decide it; one outcome per job, in order."""
    outcomes: dict[int, Outcome] = {}
    prepared: list[_Prepared] = []
    for job in jobs:
        try:
            prepared.append(_prepare(job, ctx))
        except Exception as exc:  # this job alone: input errors fail it, anything else is retried
            log.warning("score job %s could not be prepared: %s", job.key, exc)
            outcomes[job.id] = Outcome.from_error(exc)
    names = sorted({n for p in prepared for n in p.scorers})
    results: dict[int, dict[str, ScoreOutput]] = {p.job.id: {} for p in prepared}
    params: dict[str, dict[str, Any]] = {}
    model_seconds = 0.0  # the batch's model calls, every scorer's: observed as synthpipe_model_call_seconds
    for group in scorer_groups(names, ctx.settings):
        scorers = loaded_scorers(group, ctx.settings)
        for name in group:
            wanted = [p for p in prepared if name in p.scorers]
            started = time.perf_counter()
            outputs = scorers[name].run_batch([p.item for p in wanted])
            if len(outputs) != len(wanted):
                raise RuntimeError(f"scorer {name} returned {len(outputs)} outputs for {len(wanted)} items")
            model_seconds += time.perf_counter() - started
            log.info("%s scored %d edits in %.2f s", name, len(wanted), time.perf_counter() - started)
            params[name] = scorers[name].params()
            for p, out in zip(wanted, outputs, strict=True):
                results[p.job.id][name] = out
    for p in prepared:
        outcomes[p.job.id] = _finish(p, results[p.job.id], params, ctx.settings,
                                     batch={"batch_seconds": round(model_seconds, 4), "batch_size": len(prepared)})
    return [outcomes[j.id] for j in jobs]


def _prepare(job: ClaimedJob, ctx: StageContext) -> _Prepared:
    edit_id = job.payload.get("edit_id")
    if edit_id is None:
        raise InputError(f"score job {job.key} names no edit", code="score.no_edit")
    chosen = list(job.payload.get("scorers") or ctx.settings.score.scorers)
    unknown = [n for n in chosen if n not in SCORERS]
    if unknown:
        raise InputError(f"score job {job.key}: unknown scorer(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(SCORERS))}", code="score.unknown_scorer")
    with ctx.db.session() as s:
        edit = s.get(Edit, int(edit_id))
        if edit is None:
            raise InputError(f"score job {job.key}: edit {edit_id} does not exist", code="score.edit_missing")
        view = read_item_set(s, edit.item_set_id)
        prompt = edit.edit_prompt
        if prompt is None and edit.analysis_id is not None:
            analysis = s.get(Analysis, edit.analysis_id)
            prompt = analysis.edit_prompt if analysis is not None else None
        output_uri = edit.output_uri
    images = load_member_images(ctx.storage, (view.primary, *view.garments), ctx.settings.images)
    try:
        # the edit is this store's own output (or was checked on import): small is no reason to refuse it
        limits = ctx.settings.images.model_copy(update={"min_side": 1})
        edited = load_image(ctx.storage.get(output_uri), limits).image
    except FileNotFoundError:
        raise InputError(f"edit {edit_id}: stored image missing at {output_uri}", code="score.edit_image_missing") from None
    except ImageRejected as exc:
        raise InputError(f"edit {edit_id} ({output_uri}): {exc.reason}", code="score.edit_image_invalid") from None
    item = ScoreItem(key=job.key, input_image=images[0], edited_image=edited, prompt=prompt, garments=images[1:],
                     recipe=view.recipe)
    return _Prepared(job, int(edit_id), view, item, chosen)


def _finish(p: _Prepared, outputs: dict[str, ScoreOutput], params: dict[str, dict[str, Any]],
            settings: Settings, batch: dict[str, Any] | None = None) -> Outcome:
    transient = {n: o for n, o in outputs.items() if o.error is not None and o.error_kind == ErrorKind.TRANSIENT}
    if transient:  # worth another attempt: nothing is stored for this try
        name, out = next(iter(transient.items()))
        return Outcome.from_error(TransientError(f"scorer {name}: {out.error}", code=out.error_code or "score.crashed"))

    def write(session: Session, job: ClaimedJob) -> None:
        now = utcnow()
        for name, out in outputs.items():
            row = session.execute(select(Score).where(Score.edit_id == p.edit_id, Score.scorer == name)
                                  ).scalar_one_or_none()
            if row is None:
                row = Score(edit_id=p.edit_id, scorer=name, created_at=now)
                session.add(row)
            row.metrics = {k: round(float(v), 6) for k, v in out.metrics.items()}
            row.details = out.details or None
            row.raw_text = out.raw
            row.error_kind = out.error_kind.value if out.error_kind is not None else None
            row.error_code = out.error_code if out.error is not None else None
            row.error_message = out.error
            row.params = {**params.get(name, {}), "seconds": round(out.seconds, 4)}
            row.job_id = job.id
            row.updated_at = now
        session.flush()
        decided = decide_edit(session, p.edit_id, settings)
        edit = session.get(Edit, p.edit_id)
        candidate = best_of_n_payload(session, edit) if decided is not None and edit is not None else None
        if decided is None or edit is None or edit.analysis_id is None or candidate is None:
            return
        # a best-of-N candidate: its set's early stop rule (on the edit's own scoring, not a --rescore),
        # then the set's winner so far
        if "scorers" not in job.payload:
            after_decision(session, edit, candidate, decided.decision, decided.margin)
        select_for_analysis(session, edit.analysis_id, settings)

    result = {
        "edit_id": p.edit_id,
        "metrics": {n: o.metrics for n, o in outputs.items() if o.error is None},
        "errors": {n: o.error_code for n, o in outputs.items() if o.error is not None},
        **(batch or {}),  # batch_seconds: the model call time the runtime observes
    }
    spent = [o.details["usage"] for o in outputs.values() if isinstance((o.details or {}).get("usage"), dict)]
    if spent:  # what the model scorers' answers cost (the judge's tokens): the run's totals add it
        result["usage"] = spent[0] if len(spent) == 1 else spent
    return Outcome.ok(result, write=write)
