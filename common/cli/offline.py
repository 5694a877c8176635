"""Offline commands: tiny checkpoints of every backend, and the end-to-end demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.cli.base import emit, positive


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from common.devkit.tinymodels import build_all, multi_image_settings, settings_for

    written = build_all(Path(args.out_dir))
    env = settings_for(written)
    plus = multi_image_settings()
    human = "\n".join([*(f"export {k}={v}" for k, v in env.items()),
                       "# to edit try-on sets with the multi-image editor (person + garment photos):",
                       *(f"# export {k}={v}" for k, v in plus.items())])
    emit(args, {"paths": {k: str(v) for k, v in written.items()}, "settings": env,
                "multi_image_settings": plus}, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from common.devkit.demo import run_demo

    result = run_demo(Path(args.dir), persons=args.persons, garments=args.garments, characters=args.characters)
    emit(args, result, "\n".join([
        f"demo finished in {result['seconds']:.0f} s",
        f"jobs: {json.dumps(result['jobs'])}",
        f"dataset ({result['rows']} rows): {result['dataset']}",
        f"  load it: datasets.load_dataset({result['dataset']!r})",
        f"contact sheet: {result['contact_sheet']}",
        *result.get("notes", []),
    ]))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="model checkpoints")
    ms = p.add_subparsers(dest="models_command", required=True)
    t = ms.add_parser("tiny", help="write tiny random-weight checkpoints of every backend to OUT_DIR")
    t.add_argument("out_dir")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_models_tiny)

    d = sub.add_parser("demo", help="offline end to end on tiny models: ingest → pair → VL → edit → export")
    d.add_argument("--dir", default="synthpipe-demo", help="where the demo keeps its database, photos and dataset")
    d.add_argument("--persons", type=positive, default=4)
    d.add_argument("--garments", type=positive, default=6)
    d.add_argument("--characters", type=positive, default=2)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)
