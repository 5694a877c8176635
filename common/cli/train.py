"""Training commands: train edit|vl, adapters list|export, flywheel."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.cli.base import context, emit, positive
from common.core.errors import InputError


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"rank": args.rank, "steps": args.steps, "lr": args.lr, "resolution": args.resolution}


def cmd_train(args: argparse.Namespace) -> int:
    from worker_train.service import queue_train

    if args.target == "character":
        return _train_character(args)
    if args.character or args.trigger:
        raise InputError("--character and --trigger are for `train character`")
    ctx = context()
    with ctx.db.session() as s:
        job_id, key, snap = queue_train(s, ctx.settings, args.target, base=args.base, **_overrides(args))
        selection, snap_id, sha, size = dict(snap.selection), snap.id, snap.sha256, snap.size
    obj = {"job_id": job_id, "key": key, "queued": job_id is not None, "target": args.target,
           "snapshot": {"id": snap_id, "sha256": sha, "edits": size, **selection}}
    where = "the train workers" if ctx.settings.distributed else "`synthpipe run --stage train`"
    human = (f"snapshot {snap_id} ({size} accepted edits, sha256 {sha[:12]}); "
             + (f"queued train job {job_id} for {where}" if job_id else f"the same train job exists already ({key})"))
    emit(args, obj, human)
    return 0


def _train_character(args: argparse.Namespace) -> int:
    from worker_train.trainers.character_lora import queue_character_train

    if not args.character:
        raise InputError("train character needs --character ASSET (an asset id, sha256 or ingested path)")
    ctx = context()
    with ctx.db.session() as s:
        job_id, key, snap = queue_character_train(s, ctx.settings, args.character, base=args.base,
                                                  trigger=args.trigger, **_overrides(args))
        selection, snap_id, sha, size = dict(snap.selection), snap.id, snap.sha256, snap.size
    obj = {"job_id": job_id, "key": key, "queued": job_id is not None, "target": "character",
           "snapshot": {"id": snap_id, "sha256": sha, "edits": size, **selection}}
    where = "the train workers" if ctx.settings.distributed else "`synthpipe run --stage train`"
    human = (f"snapshot {snap_id} (the photo + {size} accepted images of character asset "
             f"{selection['character_asset_id']}); "
             + (f"queued train job {job_id} for {where}" if job_id else f"the same train job exists already ({key})"))
    emit(args, obj, human)
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    from worker_train.adapters import list_adapters

    ctx = context()
    with ctx.db.session() as s:
        rows = list_adapters(s, args.target)
    if getattr(args, "json", False):
        emit(args, {"adapters": rows}, "")
        return 0
    lines = [f"{'id':>4} {'target':6} {'round':>5} {'steps':>6} {'loss':>17}  {'snapshot':12} base model"]
    for a in rows:
        loss = f"{a['loss_first']:.4f}->{a['loss_last']:.4f}" if a["loss_first"] is not None else "-"
        rnd = "-" if a["round"] is None else str(a["round"])
        lines.append(f"{a['id']:>4} {a['target']:6} {rnd:>5} {a['steps']:>6} {loss:>17}  "
                     f"{a['snapshot_sha256'][:12]} {a['base_model']}")
    emit(args, {"adapters": rows}, "\n".join(lines) if rows else "no adapters yet (synthpipe train edit|vl)")
    return 0


def cmd_adapters_export(args: argparse.Namespace) -> int:
    from worker_train.export import export_adapter

    ctx = context()
    out = Path(args.out)
    with ctx.db.session() as s:
        written = export_adapter(s, ctx.storage, args.id, out)
    load = ("PeftModel.from_pretrained(base, OUT)" if written["library"] == "peft"
            else "pipe.load_lora_weights(OUT)")
    emit(args, written, f"adapter {written['adapter_id']} "
         f"({written['target']}, sha256 {written['sha256'][:12]}) written to {out} with its model card; "
         f"load it with {load}")
    return 0


def cmd_flywheel(args: argparse.Namespace) -> int:
    from worker_train.flywheel import run_flywheel

    if args.target == "character":
        return _character_flywheel(args)
    if args.character is not None or args.n is not None:
        raise InputError("--character and --n are for `flywheel --target character`")
    if args.eval_sets is None:
        raise InputError("flywheel --target edit|vl needs --eval-sets N")
    ctx = context()
    out = Path(args.out)
    report = run_flywheel(ctx, rounds=args.rounds, eval_sets=args.eval_sets, out_dir=out, target=args.target,
                          overrides=_overrides(args), timeout_s=args.timeout)
    lines = [f"flywheel ({report['target']}): {out / 'report.json'}, {out / 'report.html'}"]
    for r in report["rounds"]:
        lines.append(f"  round {r['round']} (adapter {r['adapter'] or 'base'}): {r['accepted']}/"
                     f"{args.eval_sets} accepted")
    for c in report["comparisons"]:
        acc = c["acceptance"]
        lines.append(f"  round {c['round']} vs {c['against']}: acceptance "
                     + (f"{acc['diff']:+.3f} ({acc['verdict']})" if acc else "n/a"))
    emit(args, report, "\n".join(lines))
    return 0


def _character_flywheel(args: argparse.Namespace) -> int:
    from worker_train.character_flywheel import run_character_flywheel

    if not args.character:
        raise InputError("flywheel --target character needs --character ASSET (an asset id, sha256 or ingested path)")
    ctx = context()
    out = Path(args.out)
    report = run_character_flywheel(ctx, character=args.character, rounds=args.rounds, n=args.n or 8, out_dir=out,
                                    overrides=_overrides(args), timeout_s=args.timeout)
    lines = [f"character flywheel (asset {report['character_asset_id']}): {out / 'report.json'}, {out / 'report.html'}"]
    for r in report["rounds"]:
        kept = "-" if r["identity_kept"] is None else f"{100 * r['identity_kept']:.1f} %"
        lines.append(f"  round {r['round']} (adapter {r['adapter']}): {r['generated']} generated, "
                     f"{r['accepted']} accepted, identity kept {kept} (goal >= 70 %)")
    emit(args, report, "\n".join(lines))
    return 0


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank", type=positive, default=None, help="LoRA rank (default: train.edit_rank / train.vl_rank)")
    p.add_argument("--steps", type=positive, default=None, help="optimizer steps")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    p.add_argument("--resolution", type=positive, default=None, help="training resolution in pixels")
    p.add_argument("--json", action="store_true")


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="freeze a snapshot of the accepted set and queue one LoRA train job")
    t.add_argument("target", choices=["edit", "vl", "character", "edit-plus"],
                   help="edit: the InstructPix2Pix UNet; vl: the Qwen-VL model; character: a FLUX LoRA of one character")
    t.add_argument("--base", default=None,
                   help="base model id or folder (default: edit_model / vl_model / generate.model)")
    t.add_argument("--character", default=None, metavar="ASSET",
                   help="train character: the character photo (asset id, sha256 or ingested path)")
    t.add_argument("--trigger", default=None, help="train character: its token (default: generate.trigger_word)")
    _train_flags(t)
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("adapters", help="trained LoRA adapters")
    subs = a.add_subparsers(dest="adapters_command", required=True, metavar="COMMAND")
    ls = subs.add_parser("list", help="every adapter, newest first")
    ls.add_argument("--target", choices=["edit", "vl", "character", "edit-plus"], default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_adapters_list)
    ex = subs.add_parser("export", help="write one adapter as a folder diffusers' load_lora_weights or PEFT's "
                         "PeftModel.from_pretrained opens, with its model card (README.md)")
    ex.add_argument("id", type=positive, help="the adapter id (synthpipe adapters list)")
    ex.add_argument("out", help="a new or empty folder, or one an earlier export wrote")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_adapters_export)

    f = sub.add_parser("flywheel", help="rounds of train -> remake held-out sets -> score -> compare; "
                       "writes OUT/report.json and OUT/report.html")
    f.add_argument("--rounds", type=positive, required=True, help="rounds after round 0 (the base model)")
    f.add_argument("--eval-sets", type=positive, default=None,
                   help="held-out item sets, never trained on (edit, vl)")
    f.add_argument("--out", required=True, help="report folder (a rerun with the same folder continues)")
    f.add_argument("--target", choices=["edit", "vl", "character"], default="edit",
                   help="character: enrich -> character LoRA -> generate -> identity, per round")
    f.add_argument("--character", default=None, metavar="ASSET",
                   help="--target character: the character photo (asset id, sha256 or ingested path)")
    f.add_argument("--n", type=positive, default=None,
                   help="--target character: images generated per round (default 8, same seeds every round)")
    f.add_argument("--timeout", type=_positive_float, default=3600.0,
                   help="distributed mode: seconds to wait for the workers of one step")
    _train_flags(f)
    f.set_defaults(func=cmd_flywheel)
