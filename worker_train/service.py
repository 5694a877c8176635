"""The train stage: a snapshot of the accepted set -> a LoRA adapter of the edit or VL model.

``queue_train`` freezes a snapshot and queues one ``train`` job; ``process_batch`` (the stage
function of the local runner and the Celery worker) runs it: read the snapshot's examples,
train (resuming from the job's last checkpoint after a crash), store the adapter
content-addressed and record its ``adapters`` row in the job's recording transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.core.prompts import render_for
from common.core.settings import Settings
from common.domain.itemsets import load_member_images, read_item_set
from common.runtime.runner import StageContext
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import TRAIN_TARGETS, Adapter, Analysis, Edit, Snapshot
from worker_train import snapshots
from worker_train.adapters import store_files
from worker_train.trainers.loop import Hyper

log = logging.getLogger(__name__)


def hyper_for(target: str, settings: Settings, **overrides: Any) -> Hyper:
    """The hyperparameters of a ``target`` job: settings, with ``overrides`` (CLI flags) on top."""
    t = settings.train
    per_target: dict[str, Any] = {
        "edit": {"rank": t.edit_rank, "lr": t.edit_lr, "steps": t.edit_steps, "resolution": t.edit_resolution},
        "vl": {"rank": t.vl_rank, "lr": t.vl_lr, "steps": t.vl_steps, "resolution": t.vl_resolution},
    }[target if target != "edit-plus" else "edit"]
    hp = Hyper(**per_target, batch_size=t.batch_size, checkpoint_every=t.checkpoint_every, seed=t.seed,
               conditioning_dropout=t.conditioning_dropout, gradient_checkpointing=t.gradient_checkpointing,
               optimizer=t.optimizer, device=t.device, dtype=t.dtype, quantization=t.vl_quantization)
    return replace(hp, **{k: v for k, v in overrides.items() if v is not None})


def base_model_for(target: str, settings: Settings) -> str:
    if target == "edit-plus":
        return str(settings.edit.plus_model)
    return settings.edit_model if target == "edit" else settings.vl_model


def queue_train(session: Session, settings: Settings, target: str, *, base: str | None = None,
                round_: int | None = None, exclude_item_sets: list[int] | tuple[int, ...] = (),
                key_prefix: str = "train", **overrides: Any) -> tuple[int | None, str, Snapshot]:
    """Freeze the accepted set and queue one train job over it. Returns (new job id or None when
    the same job exists already, its key, the snapshot)."""
    if target not in TRAIN_TARGETS:
        raise InputError(f"unknown train target {target!r}; allowed: {', '.join(TRAIN_TARGETS)}")
    snap = snapshots.freeze(session, target, exclude_item_sets=exclude_item_sets)
    hp = hyper_for(target, settings, **overrides)
    base_model = base or base_model_for(target, settings)
    payload = {"target": target, "snapshot_id": snap.id, "snapshot_sha256": snap.sha256, "base_model": base_model,
               "hyper": hp.as_dict(), "round": round_}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    key = f"{key_prefix}:{target}:{snap.sha256[:16]}:{digest}"
    return jobstore.enqueue(session, "train", key, payload), key, snap


# --- the stage --------------------------------------------------------------------------------


def process_batch(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    """Run each train job (one per batch in practice); one outcome per job, in order."""
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(_train(job, ctx))
        except Exception as exc:  # this job alone: input errors fail it, anything else is retried
            log.warning("train job %s failed: %s", job.key, exc)
            outcomes.append(Outcome.from_error(exc))
    return outcomes


def checkpoint_dir_for(settings: Settings, key: str) -> Path:
    """Where a job's checkpoints live: the same folder for every attempt of the job."""
    return settings.data_dir / "train" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _train(job: ClaimedJob, ctx: StageContext) -> Outcome:
    p = job.payload
    target = p.get("target")
    if target not in TRAIN_TARGETS:
        raise InputError(f"train job {job.key}: unknown target {target!r}")
    hp = Hyper(**p["hyper"])
    with ctx.db.session() as s:
        snap = snapshots.get_snapshot(s, int(p["snapshot_id"]))
        edit_ids, snap_sha = list(snap.edit_ids), snap.sha256
    work = checkpoint_dir_for(ctx.settings, job.key)
    if target == "character":
        from worker_train.trainers.character_lora import CharacterLoRATrainer, character_examples

        examples: list[Any] = character_examples(ctx, p, edit_ids)
        trainer: Any = CharacterLoRATrainer(p["base_model"], hp, trigger=p["trigger"],
                                       character_asset_id=p["character_asset_id"])
    elif target == "edit":
        from worker_train.trainers.edit_lora import EditLoRATrainer

        examples = edit_examples(ctx, edit_ids)
        trainer = EditLoRATrainer(p["base_model"], hp)
    elif target == "edit-plus":
        from worker_train.trainers.qwen_edit_lora import QwenEditPlusLoRATrainer, plus_examples

        examples = plus_examples(ctx, edit_ids)
        trainer = QwenEditPlusLoRATrainer(p["base_model"], hp, vae_image_area=ctx.settings.edit.plus_vae_image_area,
                                          condition_image_area=ctx.settings.edit.plus_condition_image_area)
    else:
        from worker_train.trainers.vl_lora import VLLoRATrainer

        examples = vl_examples(ctx, edit_ids)
        trainer = VLLoRATrainer(p["base_model"], hp)
    if not examples:
        raise InputError(f"snapshot {p['snapshot_id']}: none of its {len(edit_ids)} edits gives a training example "
                         f"for {target} (see the warnings)",
                         code="train.no_examples")
    from common.runtime.resident import on_device

    held = on_device(ctx.settings.train.device, ctx.settings)
    if held.exclusive:  # one model per card: the stages' resident models make room for training
        held.clear()
    try:
        result = trainer.train(examples, work / "checkpoints")
        folder = trainer.save(work / "adapter")
    finally:
        trainer.unload()
    weights, config = store_files(ctx.storage, folder, target)
    summary = {"adapter_sha256": weights.sha256, "examples": len(examples), "steps": result.steps,
               "seconds": result.seconds, "loss_first": result.loss_curve[0][1], "loss_last": result.loss_curve[-1][1],
               "eval_loss_start": round(result.eval_loss_start, 6), "eval_loss_end": round(result.eval_loss_end, 6),
               "resumed_from": result.resumed_from, **result.runtime}

    def write(session: Session, claimed: ClaimedJob) -> None:
        session.add(Adapter(
            target=target, base_model=p["base_model"], round=p.get("round"), snapshot_id=int(p["snapshot_id"]),
            snapshot_sha256=snap_sha, sha256=weights.sha256, weights_uri=weights.uri, config_uri=config.uri,
            hyperparameters={**hp.as_dict(), **result.runtime, "examples": len(examples),
                             "eval_loss_start": summary["eval_loss_start"], "eval_loss_end": summary["eval_loss_end"],
                             "resumed_from": result.resumed_from},
            loss_curve=result.loss_curve, steps=result.steps, train_seconds=result.seconds, job_id=claimed.id))
        shutil.rmtree(work, ignore_errors=True)  # the adapter is stored: checkpoints are no longer needed

    return Outcome.ok(summary, write=write)


# --- examples -----------------------------------------------------------------------------------


def _rows(ctx: StageContext, edit_ids: list[int]) -> list[tuple[Edit, Analysis | None]]:
    with ctx.db.session() as s:
        edits = {e.id: e for e in s.scalars(select(Edit).where(Edit.id.in_(edit_ids)))}
        ids = [e.analysis_id for e in edits.values() if e.analysis_id is not None]
        analyses = {a.id: a for a in s.scalars(select(Analysis).where(Analysis.id.in_(ids)))}
        s.expunge_all()
    return [(edits[i], analyses.get(edits[i].analysis_id or -1)) for i in edit_ids if i in edits]


def edit_examples(ctx: StageContext, edit_ids: list[int]) -> list[Any]:
    """(input photo, instruction, edited image) of each edit; one that cannot be read is left
    out with a warning (its item set or image is gone)."""
    from worker_train.trainers.edit_lora import EditExample

    out = []
    for edit, analysis in _rows(ctx, edit_ids):
        prompt = edit.edit_prompt or (analysis.edit_prompt if analysis else None)
        try:
            with ctx.db.session() as s:
                view = read_item_set(s, edit.item_set_id)
            source = load_member_images(ctx.storage, view.members[:1], ctx.settings.images)[0]
            edited = _own_image(ctx, edit.output_uri)
        except Exception as exc:
            log.warning("edit %s left out of training: %s", edit.id, exc)
            continue
        if prompt:
            out.append(EditExample(source, edited, prompt))
    return out


def _own_image(ctx: StageContext, uri: str) -> Any:
    """An image this pipeline wrote (an edit output): decoded as stored, any size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(ctx.storage.get(uri))) as im:
        return im.convert("RGB")


def vl_examples(ctx: StageContext, edit_ids: list[int]) -> list[Any]:
    """(images + the VL stage's prompt -> the accepted analysis JSON) of each edit's analysis,
    in snapshot order (people-accepted first), each analysis once."""
    from worker_train.trainers.vl_lora import VLExample

    out, seen = [], set()
    for _edit, analysis in _rows(ctx, edit_ids):
        if analysis is None or analysis.id in seen:
            continue
        seen.add(analysis.id)
        try:
            with ctx.db.session() as s:
                view = read_item_set(s, analysis.item_set_id)
            images = load_member_images(ctx.storage, view.members, ctx.settings.images)
            system, user = render_for(view.recipe, analysis.prompt_version, keywords=view.keywords,
                                      variation=view.variation, n_images=len(images))
        except Exception as exc:
            log.warning("analysis %s left out of training: %s", analysis.id, exc)
            continue
        out.append(VLExample(images, system, user, analysis.raw_text))
    return out
