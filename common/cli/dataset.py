"""Commands that move datasets in and out: ``import`` (outside pairs become scored edits) and
``export`` (the chosen edits as a dataset, a summary and a contact sheet)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.cli.base import context, emit, positive, unit_interval

DEFAULT_SHARD_SIZE = 500_000_000  # common.dataset.writers.DEFAULT_SHARD_SIZE (not imported: --help stays fast)


def cmd_import(args: argparse.Namespace) -> int:
    from common.dataset.importer import ColumnMap, import_pairs

    ctx = context()
    columns = ColumnMap(input=args.input_column, prompt=args.prompt_column, edited=args.edited_column,
                        garments=args.garments_column, recipe=args.recipe_column)
    report = import_pairs(Path(args.path), db=ctx.db, storage=ctx.storage, settings=ctx.settings,
                          columns=columns, fmt=args.format)
    lines = [f"imported {report.imported}, duplicates {report.duplicates}, rejected {len(report.rejected)}; "
             f"{report.queued} score jobs queued"]
    lines += [f"  rejected row {r['row']} ({r['split']}): {r['reason']}" for r in report.rejected]
    emit(args, report.as_dict(), "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from common.dataset.export import export

    ctx = context()
    if args.snapshot is not None:  # exactly what one train job read, for outside trainers
        from common.dataset.snapshot import export_snapshot

        done = export_snapshot(ctx.db, ctx.storage, args.snapshot, Path(args.out_dir))
        emit(args, done, f"exported snapshot {args.snapshot} ({done['rows']} examples) to {args.out_dir}: "
             "imagefolder/ (diffusers) and ai-toolkit/ (target, control folders, .txt captions)")
        return 0
    report = export(ctx.db, ctx.storage, Path(args.out_dir), fmt=args.format, decision=args.decision,
                    min_confidence=args.min_confidence, settings=ctx.settings, shard_size=args.shard_size,
                    recipe=args.recipe)
    tally = ", ".join(f"{k} {v}" for k, v in sorted(report.by_decision.items()))
    emit(args, report.as_dict(),
         f"exported {report.rows} rows ({args.decision}: {tally}) to {report.out_dir} ({report.format}); "
         f"{report.filtered} below --min-confidence"
         + (f"; {report.shards} shards" if report.shards else "") + f"\nsummary: {report.summary_path}\n"
         f"contact sheet: {report.contact_sheet}")
    return 0


def shard_size(text: str) -> int:
    from common.dataset.writers import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    i = sub.add_parser("import", help="import (input image, edit prompt, edited image) pairs from an imagefolder "
                       "or parquet dataset at PATH as edits, and queue them for scoring")
    i.add_argument("path")
    i.add_argument("--format", choices=["auto", "imagefolder", "parquet"], default="auto",
                   help="how to read PATH (auto: parquet when PATH is or holds .parquet files)")
    i.add_argument("--input-column", default="input_image", help="column of the input photo")
    i.add_argument("--prompt-column", default="edit_prompt", help="column of the instruction")
    i.add_argument("--edited-column", default="edited_image", help="column of the edited photo")
    i.add_argument("--garments-column", default="garment_images", help="column of garment photos (optional)")
    i.add_argument("--recipe-column", default="recipe",
                   help="column naming tryon or enrich (optional; default: tryon with garments, else enrich)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_import)

    e = sub.add_parser("export", help="write the dataset, a summary and a contact sheet to OUT_DIR")
    e.add_argument("out_dir")
    e.add_argument("--format", choices=["imagefolder", "parquet", "webdataset", "diffsynth", "musubi", "ai-toolkit",
                                             "preference", "vl-sft"],
                   default="imagefolder",
                   help="imagefolder (train/metadata.jsonl + images), parquet (data/train-*-of-*.parquet shards, "
                   "images embedded), webdataset (data/train-NNNNNN.tar shards), or an edit trainer's own layout "
                   "with its config, per recipe: diffsynth (DiffSynth-Studio metadata JSONL), musubi (musubi-tuner "
                   "directories, JSONL and dataset TOML), ai-toolkit (target/control folders and a job yaml); "
                   "preference: (input, instruction, chosen edit, rejected edit) parquet pairs for DPO / reward models; "
                   "vl-sft: the VL model's examples (LLaMA-Factory / ms-swift JSONL, TRL parquet)")
    e.add_argument("--shard-size", type=shard_size, default=DEFAULT_SHARD_SIZE, metavar="SIZE",
                   help="largest parquet / webdataset shard: bytes, or e.g. 500MB, 64MiB (default 500MB)")
    e.add_argument("--decision", choices=["accepted", "rejected", "all"], default="accepted",
                   help="accepted edits (default), rejected ones (preference negatives), or all, never-scored included")
    e.add_argument("--min-confidence", type=unit_interval, default=None)
    e.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="only the edits of this recipe's item sets (tryon, enrich, …)")
    e.add_argument("--snapshot", type=positive, default=None,
                   help="write exactly the data train snapshot ID holds (imagefolder + ai-toolkit layout)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export)
