"""The edit stage: analysis → edit model → stored image with its parameters and seed.

``process_batch`` is the stage function the local runner and the Celery worker both call.
The backend is the one a best-of-N candidate job names (``common.domain.editplan``), else the
recipe's (``edit.backend_tryon`` / ``edit.backend_enrich``); each is loaded once per process and
kept resident, and a batch runs one ``run_batch`` per backend. A job's seed comes from its key (or
its payload), so the same job gives the same image.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from common.core.backends import EDIT_BACKENDS
from common.core.backends import MULTI_IMAGE_EDIT_BACKENDS as MULTI_IMAGE_BACKENDS
from common.core.errors import InputError, ModelOutputError
from common.core.settings import Settings
from common.domain.adapters import materialize, resolve_adapter
from common.domain.editplan import backend_for, seed_for
from common.domain.itemsets import ItemSetView, load_member_images, read_item_set
from common.domain.scorequeue import queue_score
from common.runtime.overlap import GroupRun, grouped_phases
from common.runtime.resident import on_device
from common.runtime.runner import StageContext
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import Analysis, Edit
from worker_edit.backends import get_backend
from worker_edit.backends.base import EditItem, EditOutput

log = logging.getLogger(__name__)



def backend_options(name: str, settings: Settings) -> dict[str, Any]:
    """Everything that configures backend ``name``; recorded on every edit."""
    e = settings.edit
    opts: dict[str, Any] = {"steps": e.steps, "guidance_scale": e.guidance_scale, "max_side": e.max_side,
                            "device": e.device, "dtype": e.dtype, "max_batch": e.batch_size}
    if name in MULTI_IMAGE_BACKENDS:
        opts.update(model=e.plus_model, steps=e.plus_steps, guidance_scale=e.plus_guidance_scale,
                    vae_image_area=e.plus_vae_image_area, condition_image_area=e.plus_condition_image_area)
    elif name == "flux-kontext":
        opts.update(model=e.kontext_model, steps=e.kontext_steps, guidance_scale=e.kontext_guidance_scale,
                    true_cfg_scale=e.kontext_true_cfg_scale, max_sequence_length=e.kontext_max_sequence_length,
                    auto_resize=e.kontext_auto_resize, lora_scale=e.kontext_lora_scale,
                    lora_path=str(e.kontext_lora_path) if e.kontext_lora_path else None)
    else:
        opts.update(model=settings.edit_model, image_guidance_scale=e.image_guidance_scale,
                    scheduler=e.scheduler)
    return opts


def resident_backend(name: str, settings: Settings, adapter: str | None = None):  # -> EditBackend
    opts = backend_options(name, settings)
    if adapter is not None:  # a LoRA folder (named by its hash): part of the residency key
        opts["adapter"] = adapter
    manager = on_device(settings.edit.device, settings)
    return manager.get((name, *sorted(opts.items())), lambda: get_backend(name, **opts),
                        label=f"{name} {opts['model']}")


@dataclass
class _Prepared:
    job: ClaimedJob
    item_set: ItemSetView
    analysis_id: int
    backend: str
    item: EditItem
    adapter_id: int | None = None
    adapter_path: str | None = None
    adapter_sha256: str | None = None
    candidate: int | None = None  # which of its analysis's best-of-N candidates


#: the stage cut where the model call begins and ends (``common.runtime.overlap``): rows and photos are
#: read and decoded per job, then one ``run_batch`` per (backend, adapter) group
PHASES = grouped_phases("edit", prepare_one=lambda job, ctx: _prepare(job, ctx),
                        group_of=lambda p: (p.backend, p.adapter_path),
                        backend_for=lambda key, ctx: resident_backend(key[0], ctx.settings, key[1]),
                        finish_one=lambda p, out, run, ctx: _finish(p, out, run, ctx))


#: the stage function the runner and the Celery task call: edit each job's photo as its analysis says; one outcome per job, in order.
process_batch = PHASES.whole


def _prepare(job: ClaimedJob, ctx: StageContext) -> _Prepared:
    analysis_id = job.payload.get("analysis_id")
    if analysis_id is None:
        raise InputError(f"edit job {job.key} names no analysis")
    with ctx.db.session() as s:
        analysis = s.get(Analysis, int(analysis_id))
        if analysis is None:
            raise InputError(f"edit job {job.key}: analysis {analysis_id} does not exist")
        view = read_item_set(s, analysis.item_set_id)
        prompt, negative = analysis.edit_prompt, analysis.negative_prompt
        # a best-of-N candidate names its backend; a plain edit takes its recipe's
        name = str(job.payload.get("backend") or backend_for(view.recipe, ctx.settings))
        if name not in EDIT_BACKENDS:
            raise InputError(f"edit job {job.key} names the unknown backend {name!r}; allowed: "
                             f"{', '.join(sorted(EDIT_BACKENDS))}", code="edit.unknown_backend")
        # a job may name its adapter (the flywheel's rounds do); else the setting decides
        adapter = resolve_adapter(s, "edit", str(job.payload.get("adapter") or ctx.settings.edit.adapter)) \
            if name == "instruct-pix2pix" else None
        if name == "qwen-image-edit-plus":  # a LoRA of the Plus transformer (train edit-plus)
            adapter = resolve_adapter(s, "edit-plus", ctx.settings.edit.plus_adapter)
        if name == "flux-kontext":  # a FLUX transformer LoRA: a character adapter
            adapter = resolve_adapter(s, "character", str(job.payload.get("adapter") or ctx.settings.edit.kontext_adapter))
    members = view.members if name in MULTI_IMAGE_BACKENDS else view.members[:1]
    images = load_member_images(ctx.storage, members, ctx.settings.images)
    item = EditItem(key=job.key, image=images[0], garments=images[1:], prompt=prompt,
                    negative_prompt=negative or ctx.settings.edit.negative_prompt,
                    seed=int(job.payload.get("seed", seed_for(job.key))))
    path = str(materialize(adapter, ctx.storage, ctx.settings.data_dir)) if adapter is not None else None
    candidate = job.payload.get("candidate")
    return _Prepared(job, view, int(analysis_id), name, item, adapter.id if adapter else None, path,
                     adapter.sha256 if adapter else None, None if candidate is None else int(candidate))


def provenance(params: dict[str, Any], p: _Prepared) -> dict[str, Any]:
    """The backend's params as an edit records them: its adapter named by id and weights hash
    (``edit_adapter_id``, ``edit_adapter_sha256``), never by the local folder it was read from."""
    recorded = {k: v for k, v in params.items() if k != "adapter"}
    if p.adapter_path is not None and recorded.get("lora_path") == p.adapter_path:  # flux-kontext's copy of it
        recorded["lora_path"] = None
    return {**recorded, "edit_adapter_id": p.adapter_id, "edit_adapter_sha256": p.adapter_sha256}


def _finish(p: _Prepared, out: EditOutput, run: GroupRun, ctx: StageContext) -> Outcome:
    params, batch_s, batch_size = provenance(run.params, p), run.seconds, run.size
    error = out.exception()
    if error is not None or out.image is None:
        return Outcome.from_error(error or ModelOutputError("no image returned", code="edit.no_image"))
    buf = io.BytesIO()
    out.image.save(buf, format="PNG")
    stored = ctx.storage.put(buf.getvalue(), "png")
    timings = {"seconds": round(out.seconds, 4), "batch_seconds": round(batch_s, 4), "batch_size": batch_size}
    width, height = out.image.size

    def write(session: Session, job: ClaimedJob) -> None:
        edit = Edit(
            job_id=job.id, analysis_id=p.analysis_id, item_set_id=p.item_set.id, backend=p.backend,
            model_id=str(params.get("model", "")), params=params, seed=p.item.seed, output_uri=stored.uri,
            output_sha256=stored.sha256, width=width, height=height, timings=timings, adapter_id=p.adapter_id,
            candidate=p.candidate,
        )
        session.add(edit)
        session.flush()
        queue_score(session, edit.id, item_set_id=p.item_set.id, parent_id=job.id)  # every edit is scored

    result = {"output_uri": stored.uri, "seed": p.item.seed, "width": width, "height": height, **timings}
    return Outcome.ok(result, write=write)
