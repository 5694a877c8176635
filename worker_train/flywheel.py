"""Rounds of the flywheel: train on the accepted set, remake held-out sets, score, compare.

``run_flywheel`` fixes K held-out item sets (never trained on: every snapshot excludes them),
makes and scores round 0 on them with the base model, then for each round trains an adapter
on the accepted set, remakes the held-out sets with it (same seeds), scores them and compares
the round with the one before. Every job has a key made of the run's id and the round, so a
rerun queues nothing twice and continues where the last one stopped; ``DIR/flywheel.json``
holds the run's id and its held-out sets. In local mode the stages run in this process; with
a broker the jobs go to the workers and this waits for them.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.core.errors import InputError, SynthpipeError
from common.runtime.runner import StageContext, run_all
from common.store import jobs as jobstore
from common.store.rows import TRAIN_TARGETS, Adapter, Analysis, Edit, ItemSet, Job, Score
from worker_train.report import build_report, write_report
from worker_train.service import queue_train

log = logging.getLogger(__name__)

STATE_FILE = "flywheel.json"
FINAL = ("succeeded", "skipped", "failed", "dead", "cancelled")


class FlywheelError(SynthpipeError):
    default_code = "flywheel.job_failed"


def _seed(run: str, item_key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"flywheel:{run}:{item_key}".encode()).digest()[:8], "big") >> 11


def _load_state(out_dir: Path, ctx: StageContext, target: str, eval_sets: int) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        if state["target"] != target or len(state["eval_item_sets"]) != eval_sets:
            raise InputError(f"{out_dir} holds a flywheel run with target {state['target']} and "
                             f"{len(state['eval_item_sets'])} held-out sets; use another --out for a new run")
        return dict(state)
    with ctx.db.session() as s:
        # item sets the base VL model analysed: the held-out sets are drawn from them
        candidates = sorted(set(s.scalars(select(Analysis.item_set_id).where(Analysis.adapter_id.is_(None)))))
    if len(candidates) < eval_sets:
        raise InputError(f"--eval-sets {eval_sets}: only {len(candidates)} analysed item sets exist "
                         "(ingest, pair and run the vl stage first)")
    chosen = sorted(random.Random(ctx.settings.train.eval_seed).sample(candidates, eval_sets))
    state = {"run": secrets.token_hex(6), "target": target, "eval_item_sets": chosen}
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    return state


def _settle(ctx: StageContext, stage_names: list[str], keys: list[str], timeout_s: float) -> None:
    """Run (local mode) or wait for (distributed mode) the jobs named by ``keys`` and the jobs
    they queued, until none is queued or running."""
    if not ctx.settings.distributed:
        run_all(ctx, stage_names)
        return
    deadline = time.monotonic() + timeout_s
    while True:
        with ctx.db.session() as s:
            ids = set(s.scalars(select(Job.id).where(Job.key.in_(keys))))
            frontier = set(ids)
            while frontier:  # the jobs these queued (edit -> score, vl -> edit -> score)
                frontier = set(s.scalars(select(Job.id).where(Job.parent_id.in_(frontier)))) - ids
                ids |= frontier
            busy = s.scalar(select(Job.id).where(Job.id.in_(ids), Job.status.not_in(FINAL)).limit(1))
        if busy is None:
            return
        if time.monotonic() > deadline:
            raise FlywheelError(f"timed out after {timeout_s:.0f} s waiting for {', '.join(stage_names)} "
                                "workers", code="flywheel.timeout")
        time.sleep(1.0)


def _train_round(ctx: StageContext, state: dict[str, Any], r: int, overrides: dict[str, Any],
                 timeout_s: float) -> int:
    """The adapter of round ``r`` (trained now unless a rerun finds it); returns its id."""
    target = state["target"]
    with ctx.db.session() as s:
        # each round draws its own LoRA initialisation and example order unless --seed says otherwise
        chosen = {"seed": ctx.settings.train.seed + r, **overrides}
        _, key, snap = queue_train(s, ctx.settings, target, round_=r, exclude_item_sets=state["eval_item_sets"],
                                   key_prefix=f"flywheel:{state['run']}:r{r}", **chosen)
    log.info("flywheel round %d: training %s on snapshot %s (%d edits)", r, target, snap.id, snap.size)
    _settle(ctx, ["train"], [key], timeout_s)
    with ctx.db.session() as s:
        job = s.scalars(select(Job).where(Job.key == key)).one()
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job.id)).first()
        if adapter is None:
            raise FlywheelError(f"round {r}: train job {job.id} ended {job.status} ({job.reason}: "
                                f"{job.error_message}); fix it and `synthpipe jobs retry`, then rerun")
        return adapter.id


def _eval_round(ctx: StageContext, state: dict[str, Any], r: int, adapter_id: int | None,
                timeout_s: float) -> dict[int, int | None]:
    """Remake the held-out sets for round ``r``; returns item set id -> edit id (None: no edit)."""
    run, target = state["run"], state["target"]
    adapter = str(adapter_id) if adapter_id is not None else "none"
    prefix = f"flywheel:{run}:r{r}"
    keys: list[str] = []
    edit_keys: dict[int, str] = {}
    with ctx.db.session() as s:
        for item_set_id in state["eval_item_sets"]:
            item = s.get(ItemSet, item_set_id)
            if item is None:
                raise InputError(f"held-out item set {item_set_id} no longer exists")
            seed = _seed(run, item.key)
            edit_keys[item_set_id] = f"{prefix}:edit:{item.key}"
            if target == "vl":
                key = f"{prefix}:vl:{item.key}"
                jobstore.enqueue(s, "vl", key, {"item_set_id": item.id, "recipe": item.recipe, "adapter": adapter,
                                                "edit_key": edit_keys[item_set_id],
                                                "edit_payload": {"seed": seed, "adapter": "none"}},
                                 item_set_id=item.id)
                keys.append(key)
                continue
            analysis_id = s.scalar(select(Analysis.id).where(Analysis.item_set_id == item.id,
                                                             Analysis.adapter_id.is_(None)).order_by(Analysis.id))
            jobstore.enqueue(s, "edit", edit_keys[item_set_id],
                             {"analysis_id": analysis_id, "item_set_id": item.id, "recipe": item.recipe,
                              "seed": seed, "adapter": adapter}, item_set_id=item.id)
            keys.append(edit_keys[item_set_id])
    _settle(ctx, ["vl", "edit", "score"] if target == "vl" else ["edit", "score"], keys, timeout_s)
    with ctx.db.session() as s:
        rows = dict(s.execute(select(Job.key, Edit.id).join(Edit, Edit.job_id == Job.id)
                              .where(Job.key.in_(list(edit_keys.values())))).all())
    return {i: rows.get(k) for i, k in edit_keys.items()}


def collect_round(ctx: StageContext, r: int, adapter_id: int | None, edits: dict[int, int | None]) -> dict[str, Any]:
    """What round ``r`` came to, per held-out item set: decision, reasons, numeric metrics, image."""
    from common.domain.final_decision import final_decisions
    from common.store.rows import Decision

    ids = [e for e in edits.values() if e is not None]
    with ctx.db.session() as s:
        finals = final_decisions(s, ids) if ids else {}
        reasons: dict[int, Any] = dict(s.execute(select(Decision.edit_id, Decision.reasons).where(Decision.edit_id.in_(ids)))
                       .all())
        metrics: dict[int, dict[str, float]] = {}
        for score in s.scalars(select(Score).where(Score.edit_id.in_(ids))):
            for name, value in (score.metrics or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics.setdefault(score.edit_id, {})[f"{score.scorer}.{name}"] = float(value)
        uris = dict(s.execute(select(Edit.id, Edit.output_uri).where(Edit.id.in_(ids))).all())
    items = []
    for item_set_id, edit_id in edits.items():
        fd = finals.get(edit_id) if edit_id is not None else None
        decision = fd.decision if fd is not None else None
        items.append({"item_set_id": item_set_id, "edit_id": edit_id, "decision": decision,
                      "source": fd.source if fd is not None else None,
                      "reasons": list(reasons.get(edit_id or -1) or []) if decision == "rejected" else [],
                      "metrics": metrics.get(edit_id, {}) if edit_id is not None else {},
                      "image_uri": uris.get(edit_id) if edit_id is not None else None})
    return {"round": r, "adapter": adapter_id, "items": items}


def run_flywheel(ctx: StageContext, *, rounds: int, eval_sets: int, out_dir: Path, target: str = "edit",
                 overrides: dict[str, Any] | None = None, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run rounds 0..``rounds`` (round 0: the base model) and write the report; returns report.json's object."""
    if target not in TRAIN_TARGETS:
        raise InputError(f"--target {target!r}: allowed {', '.join(TRAIN_TARGETS)}")
    if rounds < 1 or eval_sets < 1:
        raise InputError("--rounds and --eval-sets must be at least 1")
    state = _load_state(out_dir, ctx, target, eval_sets)
    results = []
    for r in range(rounds + 1):
        adapter_id = None if r == 0 else _train_round(ctx, state, r, overrides or {}, timeout_s)
        edits = _eval_round(ctx, state, r, adapter_id, timeout_s)
        results.append(collect_round(ctx, r, adapter_id, edits))
        log.info("flywheel round %d done", r)
    report = build_report(target, results, eval_sets, seed=ctx.settings.train.eval_seed,
                          min_items=ctx.settings.train.min_eval_items)
    write_report(out_dir, report, results, ctx.storage, state)
    return report
