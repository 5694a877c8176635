"""The generate stage: a character photo + its LoRA -> new images of that character.

``queue_generate`` (``synthpipe generate``) draws N prompts from the keyword sampler around the
adapter's trigger word and queues one ``generate`` job each; the prompt, keywords and seed are
in the job, so a job makes the same image whenever it runs. ``process_batch`` renders them with
FLUX (one resident pipeline per adapter), and each image that is not a duplicate of a stored one
becomes, in the job's recording transaction:

- a ``character`` asset (dedup through ``common.media.assets``),
- its ``asset_lineage`` row (provenance ``generated``: source photo, adapter, prompt, seed,
  parameters),
- an edit row of origin ``generated`` (input: the source photo, output: the new image, no
  instruction), so the score stage scores it like any edit — identity against the source photo
  — and decisions, review and export apply to it,
- its score job (``generate.identity_score``), running the ``identity`` scorer only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from common.core.errors import InputError, TransientError
from common.core.settings import Settings
from common.domain.adapters import AdapterRef, materialize
from common.domain.characters import resolve_character, resolve_character_adapter
from common.domain.itemsets import ensure_item_set
from common.media.assets import Provenance, find_near_duplicate, register_image_bytes
from common.media.images import load_image
from common.runtime.overlap import GroupRun, grouped_phases
from common.runtime.resident import on_device
from common.runtime.runner import StageContext
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import Adapter, Asset, AssetLineage, Edit
from worker_generate.backends import get_backend
from worker_generate.backends.flux import GenerateItem, GenerateOutput
from worker_generate.prompts import check_template, draw_prompt

log = logging.getLogger(__name__)

STAGE = "generate"
BACKEND = "flux"


# --- the generate item set ---------------------------------------------------------------------


def _ref(row: Adapter) -> AdapterRef:
    return AdapterRef(row.id, row.target, row.sha256, row.base_model, row.weights_uri, row.config_uri)


def generate_item_set(session: Session, asset_id: int) -> int:
    """The item set a character's generated images are scored against (its photo alone)."""
    return ensure_item_set(session, f"generate:character:{asset_id}", "enrich", [(asset_id, "character")])


# --- queueing -----------------------------------------------------------------------------------


def _seed(base: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{index}".encode()).digest()[:8], "big") >> 11


def queue_generate(session: Session, settings: Settings, character: str, n: int, *, adapter: str | None = None,
                   seed: int | None = None) -> dict[str, Any]:
    """Queue ``n`` generate jobs for the character photo ``character``; returns what was queued.
    The same character, adapter, seed and n queue the same jobs (a rerun adds nothing)."""
    if n < 1:
        raise InputError("--n must be at least 1")
    check_template(settings)
    asset = resolve_character(session, character)
    row = resolve_character_adapter(session, asset.id, adapter or settings.generate.adapter)
    trigger = str((row.hyperparameters or {}).get("trigger") or settings.generate.trigger_word) if row \
        else settings.generate.trigger_word
    base = seed if seed is not None else random.SystemRandom().randrange(2**31)
    item_set_id = generate_item_set(session, asset.id)
    queued, jobs = 0, []
    for index in range(n):
        prompt, keywords = draw_prompt(settings, trigger, random.Random(f"{base}:{index}"))
        payload = {"character_asset_id": asset.id, "adapter_id": row.id if row else None, "trigger": trigger,
                   "prompt": prompt, "keywords": keywords, "seed": _seed(base, index), "base_seed": base,
                   "index": index}
        key = f"generate:{asset.sha256[:16]}:{row.id if row else 'none'}:{base}:{index}"
        job_id = jobstore.enqueue(session, STAGE, key, payload, item_set_id=item_set_id)
        queued += job_id is not None
        jobs.append({"job_id": job_id, "key": key, "prompt": prompt, "seed": payload["seed"]})
    return {"character_asset_id": asset.id, "adapter_id": row.id if row else None, "trigger": trigger,
            "seed": base, "queued": queued, "existing": n - queued, "jobs": jobs}


# --- the stage ----------------------------------------------------------------------------------


@dataclass
class _Prepared:
    job: ClaimedJob
    item: GenerateItem
    source_asset_id: int
    item_set_id: int
    adapter_id: int | None
    adapter_path: str | None
    adapter_sha256: str | None = None


def backend_options(settings: Settings) -> dict[str, Any]:
    g = settings.generate
    return {"model": g.model, "steps": g.steps, "guidance_scale": g.guidance_scale, "device": g.device,
            "dtype": g.dtype, "max_batch": g.batch_size, "max_sequence_length": g.max_sequence_length,
            "lora_scale": g.lora_scale}


def resident_backend(settings: Settings, adapter_path: str | None) -> Any:
    opts = {**backend_options(settings), "adapter": adapter_path}
    return on_device(settings.generate.device, settings).get(
        (BACKEND, *sorted(opts.items())), lambda: get_backend(BACKEND, **opts), label=f"flux {opts['model']}")


#: the stage cut where the model call begins and ends (``common.runtime.overlap``)
PHASES = grouped_phases("generate", prepare_one=lambda job, ctx: _prepare(job, ctx),
                        group_of=lambda p: p.adapter_path,
                        backend_for=lambda adapter, ctx: resident_backend(ctx.settings, adapter),
                        finish_one=lambda p, out, run, ctx: _finish(p, out, run, ctx))


#: the stage function the runner and the Celery task call: render each job's prompt; one outcome per job, in order.
process_batch = PHASES.whole


def _prepare(job: ClaimedJob, ctx: StageContext) -> _Prepared:
    p = job.payload
    for name in ("character_asset_id", "prompt", "seed"):
        if name not in p:
            raise InputError(f"generate job {job.key} has no {name}")
    g = ctx.settings.generate
    with ctx.db.session() as s:
        source = s.get(Asset, int(p["character_asset_id"]))
        if source is None:
            raise InputError(f"generate job {job.key}: character asset {p['character_asset_id']} does not exist")
        item_set_id = job.item_set_id or generate_item_set(s, source.id)
        ref = None
        if p.get("adapter_id") is not None:
            row = s.get(Adapter, int(p["adapter_id"]))
            if row is None:
                raise InputError(f"generate job {job.key}: adapter {p['adapter_id']} does not exist",
                                 code="generate.unknown_adapter")
            ref = _ref(row)
    path = str(materialize(ref, ctx.storage, ctx.settings.data_dir)) if ref is not None else None
    item = GenerateItem(key=job.key, prompt=str(p["prompt"]), seed=int(p["seed"]), width=g.width, height=g.height)
    return _Prepared(job, item, int(p["character_asset_id"]), int(item_set_id), ref.id if ref else None, path,
                     ref.sha256 if ref else None)


def _siblings(p: _Prepared) -> Select[Any]:
    """The assets a new image is compared with for near duplicates: the character's images from
    the same adapter (or from none). Another adapter's image at the same prompt and seed is the
    other half of a v1/v2 comparison, not a repeat, however little the adapter changed it."""
    same_adapter = (AssetLineage.adapter_id.is_(None) if p.adapter_id is None
                    else AssetLineage.adapter_id == p.adapter_id)
    return select(AssetLineage.asset_id).where(AssetLineage.source_asset_id == p.source_asset_id, same_adapter)


def _finish(p: _Prepared, out: GenerateOutput, run: GroupRun, ctx: StageContext) -> Outcome:
    params, batch_s, batch_size = run.params, run.seconds, run.size
    made: dict[str, int] = run.state.setdefault("made", {})  # sha256 -> job id, for repeats inside this batch
    from common.core.errors import rebuild

    if out.image is None:
        return Outcome.from_error(rebuild(out.error_kind or "transient", out.error or "no image",
                                          code=out.error_code or "generate.no_image"))
    buf = io.BytesIO()
    out.image.save(buf, format="PNG")
    data = buf.getvalue()
    g = ctx.settings.generate
    loaded = load_image(data, ctx.settings.images)
    if loaded.sha256 in made:
        return Outcome.skip("generate.duplicate", f"the image repeats that of job {made[loaded.sha256]} in this batch",
                            {"duplicate_of_job": made[loaded.sha256]})
    made[loaded.sha256] = p.job.id
    siblings = _siblings(p)
    with ctx.db.session() as s:
        same = s.scalar(select(Asset.id).where(Asset.sha256 == loaded.sha256))
        near = None if same is not None or g.phash_threshold is None else find_near_duplicate(
            s, loaded.phash, loaded.colour, g.phash_threshold, ctx.settings.scrape.colour_tolerance, among=siblings)
    if same is not None or near is not None:
        code = "generate.duplicate" if same is not None else "generate.near_duplicate"
        return Outcome.skip(code, f"the image repeats stored asset {same or near}", {"duplicate_of": same or near})
    timings = {"seconds": round(out.seconds, 4), "batch_seconds": round(batch_s, 4), "batch_size": batch_size}
    # the adapter by id and weights hash, never by the local folder it was read from
    lineage_params = {**{k: v for k, v in params.items() if k != "adapter_path"},
                      "generate_adapter_id": p.adapter_id, "generate_adapter_sha256": p.adapter_sha256,
                      "width": p.item.width, "height": p.item.height,
                      "keywords": p.job.payload.get("keywords"), "trigger": p.job.payload.get("trigger")}
    result: dict[str, Any] = {"prompt": p.item.prompt, "seed": p.item.seed, "adapter_id": p.adapter_id, **timings}

    def write(session: Session, job: ClaimedJob) -> None:
        reg = register_image_bytes(session, data, role="character", storage=ctx.storage, limits=ctx.settings.images,
                                   provenance=Provenance(licence="generated by synthpipe"),
                                   phash_threshold=g.phash_threshold,
                                   colour_tolerance=ctx.settings.scrape.colour_tolerance, near_among=siblings)
        if reg.status != "registered" or reg.asset_id is None:  # stored meanwhile: the retry skips it
            raise TransientError(f"generated image became a {reg.status} while recording", code="generate.raced")
        asset = session.get(Asset, reg.asset_id)
        assert asset is not None
        edit = Edit(job_id=job.id, analysis_id=None, item_set_id=p.item_set_id, origin="generated",
                    edit_prompt=None, backend=BACKEND, model_id=str(params.get("model", "")), params=lineage_params,
                    seed=p.item.seed, output_uri=asset.uri, output_sha256=asset.sha256, width=asset.width,
                    height=asset.height, timings=timings, adapter_id=p.adapter_id,
                    provenance={"provenance": "generated", "asset_id": asset.id, "prompt": p.item.prompt})
        session.add(edit)
        session.flush()
        session.add(AssetLineage(asset_id=asset.id, provenance="generated", source_asset_id=p.source_asset_id,
                                 edit_id=edit.id, job_id=job.id, adapter_id=p.adapter_id, prompt=p.item.prompt,
                                 seed=p.item.seed, backend=BACKEND, model_id=str(params.get("model", "")),
                                 params=lineage_params))
        if g.identity_score and "score" in _stage_names():
            from common.domain.scorequeue import queue_score

            queue_score(session, edit.id, ["identity"], item_set_id=p.item_set_id, parent_id=job.id)

    return Outcome.ok(result, write=write)


def _stage_names() -> tuple[str, ...]:
    from common.core import stages

    return stages.names()
