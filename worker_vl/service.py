"""The VL stage: item set → images + prompt → one constrained ``generate`` per batch → analysis.

``process_batch`` is the stage function the local runner and the Celery worker both call.
The model is loaded once per process and stays resident.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from common.core.backends import SERVED_VL_BACKENDS, vl_backend_options
from common.core.errors import ConfigError, InputError, ModelOutputError
from common.core.prompts import render_for
from common.core.settings import Settings
from common.domain.adapters import materialize, resolve_adapter
from common.domain.editplan import CandidateBudget, enqueue_candidates
from common.domain.itemsets import ItemSetView, load_member_images, read_item_set
from common.domain.schemas import (
    FEASIBILITY_RANK,
    SCHEMA_VERSION,
    EditCore,
    analysis_json_schema,
    analysis_model,
)
from common.runtime.overlap import GroupRun, grouped_phases
from common.runtime.runner import StageContext
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import Analysis
from worker_vl.backends import resident_backend_for
from worker_vl.backends.base import VLItem, VLOutput, usage_of

log = logging.getLogger(__name__)


def backend_options(settings: Settings) -> dict[str, Any]:
    """Everything that selects and configures the VL model; recorded on every analysis."""
    return vl_backend_options(settings)


def resident_backend(settings: Settings, adapter: str | None = None):  # -> Backend
    """The process's loaded backend for these settings (loaded on first use, then kept)."""
    opts = backend_options(settings)
    if adapter is not None:  # a LoRA folder (named by its hash): part of the residency key
        if settings.vl.backend in SERVED_VL_BACKENDS:
            raise ConfigError("vl.adapter: a LoRA adapter cannot be sent to a served model (vl.backend "
                              f"{settings.vl.backend}); load it in the server, or set vl.adapter to none")
        opts["adapter"] = adapter
    return resident_backend_for(settings.vl.backend, opts, settings)


@dataclass
class _Prepared:
    job: ClaimedJob
    item_set: ItemSetView
    item: VLItem
    adapter_id: int | None = None
    adapter_path: str | None = None
    adapter_sha256: str | None = None


#: the stage cut where the model call begins and ends (``common.runtime.overlap``): rows, images and
#: prompts are prepared per job, then one constrained ``generate`` per adapter group
PHASES = grouped_phases("vl", prepare_one=lambda job, ctx: _prepare(job, ctx), group_of=lambda p: p.adapter_path,
                        backend_for=lambda adapter, ctx: resident_backend(ctx.settings, adapter),
                        finish_one=lambda p, out, run, ctx: _finish(p, out, run, ctx))


#: the stage function the runner and the Celery task call: analyse each job's item set; one outcome per job, in order.
process_batch = PHASES.whole


def _prepare(job: ClaimedJob, ctx: StageContext) -> _Prepared:
    item_set_id = job.payload.get("item_set_id") or job.item_set_id
    if item_set_id is None:
        raise InputError(f"vl job {job.key} names no item set")
    with ctx.db.session() as s:
        view = read_item_set(s, int(item_set_id))
        # a job may name its adapter (the flywheel's rounds do); else the setting decides
        adapter = resolve_adapter(s, "vl", str(job.payload.get("adapter") or ctx.settings.vl.adapter))
    path = str(materialize(adapter, ctx.storage, ctx.settings.data_dir)) if adapter is not None else None
    images = load_member_images(ctx.storage, view.members, ctx.settings.images)
    system, user = render_for(view.recipe, ctx.settings.vl.prompt_version, keywords=view.keywords,
                              variation=view.variation, n_images=len(images))
    item = VLItem(key=job.key, images=images, system_prompt=system, user_prompt=user,
                  json_schema=analysis_json_schema(view.recipe))
    return _Prepared(job, view, item, adapter.id if adapter else None, path, adapter.sha256 if adapter else None)


def parse_analysis(recipe: str, raw: str) -> EditCore:
    """Validate model text against the recipe's schema, or raise ``ModelOutputError`` keeping it."""
    try:
        return analysis_model(recipe).model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ModelOutputError(f"output is not JSON: {exc}", raw=raw, code="vl.not_json") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(root)"
        raise ModelOutputError(f"output does not match the {recipe} schema at {where}: {first['msg']}",
                               raw=raw, code="vl.schema_invalid") from None


def gate(analysis: EditCore, settings: Settings) -> tuple[str, str] | None:
    """Why an analysis should not be edited, as (reason code, sentence), or None when it passes."""
    vl = settings.vl
    if FEASIBILITY_RANK[analysis.feasibility] < FEASIBILITY_RANK[vl.min_feasibility]:
        return "vl.low_feasibility", f"feasibility {analysis.feasibility} below {vl.min_feasibility}"
    if analysis.confidence < vl.min_confidence:
        return "vl.low_confidence", f"confidence {analysis.confidence:.2f} below {vl.min_confidence:.2f}"
    return None


def _finish(p: _Prepared, out: VLOutput, run: GroupRun, ctx: StageContext) -> Outcome:
    settings, batch_s, batch_size = ctx.settings, run.seconds, run.size
    error = out.exception()
    usage = usage_of(out, settings.vl_model)
    # a failed job still says which adapter it ran with, and what its answer cost
    made_by: dict[str, Any] = {"adapter_id": p.adapter_id, **usage}
    if error is not None:
        return Outcome.from_error(error, made_by)
    try:
        analysis = parse_analysis(p.item_set.recipe, out.raw_text)
    except ModelOutputError as exc:
        return Outcome.from_error(exc, made_by)
    timings = {"seconds": round(out.seconds, 4), "batch_seconds": round(batch_s, 4), "batch_size": batch_size,
               "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}
    gated = gate(analysis, settings)
    write = _writer(p, out, analysis, timings, settings, enqueue_edit=gated is None, budget=ctx.candidate_budget)
    result = {"confidence": analysis.confidence, "feasibility": analysis.feasibility, **timings, **usage}
    if gated is not None:
        return Outcome.skip(gated[0], gated[1], result, write=write)
    return Outcome.ok(result, write=write)


def _writer(p: _Prepared, out: VLOutput, analysis: EditCore, timings: dict[str, Any], settings: Settings,
            *, enqueue_edit: bool, budget: CandidateBudget | None = None):  # -> Writer
    options = backend_options(settings)
    # the adapter by id and weights hash, never by the local folder it was read from
    params = {**options, "schema_version": SCHEMA_VERSION, "vl_adapter_id": p.adapter_id,
              "vl_adapter_sha256": p.adapter_sha256}
    if out.served_model:  # the model id the server answered with
        params["server_model"] = out.served_model
    raw = out.raw_text

    def write(session: Session, job: ClaimedJob) -> None:
        row = Analysis(
            job_id=job.id, item_set_id=p.item_set.id, recipe=p.item_set.recipe,
            schema_version=SCHEMA_VERSION, prompt_version=settings.vl.prompt_version,
            backend=settings.vl.backend, model_id=options["model"], params=params, raw_text=raw,
            data=analysis.model_dump(mode="json"), edit_prompt=analysis.edit_prompt,
            negative_prompt=analysis.negative_prompt, confidence=analysis.confidence,
            feasibility=analysis.feasibility, timings=timings, adapter_id=p.adapter_id,
        )
        session.add(row)
        session.flush()
        if not enqueue_edit:
            return
        base = {"analysis_id": row.id, "item_set_id": p.item_set.id, "recipe": p.item_set.recipe,
                **(job.payload.get("edit_payload") or {})}
        if job.payload.get("edit_key"):  # a job that names its edit (the flywheel's rounds): that one alone
            jobstore.enqueue(session, "edit", job.payload["edit_key"], base, item_set_id=p.item_set.id,
                             parent_id=job.id)
            return
        # best-of-N: edit.candidates candidate edits (one, with today's key, by default)
        enqueue_candidates(session, set_key=f"edit:{p.item_set.key}", base=base, recipe=p.item_set.recipe,
                           item_set_id=p.item_set.id, parent_id=job.id, settings=settings, budget=budget)

    return write
