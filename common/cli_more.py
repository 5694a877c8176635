"""Commands of the later stages: pair, crawl, worker, export, models, demo, flower.

Each ``add_*`` adds one sub-command to the parser; handlers import what they need.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.cli import _context, _emit

REGISTER: list[Callable[[Any], None]] = []


def command(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    REGISTER.append(fn)
    return fn


# --- pair ----------------------------------------------------------------------------------


def cmd_pair(args: argparse.Namespace) -> int:
    from common.pairing import pair

    ctx = _context()
    with ctx.db.session() as s:
        report = pair(s, ctx.settings, args.recipe, limit=args.limit, seed=args.seed)
    _emit(args, report.as_dict(),
          f"{args.recipe}: {report.created} new sets ({report.jobs} vl jobs queued), {report.existing} existed")
    return 0


@command
def add_pair(sub: Any) -> None:
    p = sub.add_parser("pair", help="make item sets from stored photos and queue their vl jobs")
    p.add_argument("--recipe", required=True, choices=["tryon", "enrich"])
    p.add_argument("--limit", type=_positive, default=None,
                   help="most new sets (tryon default: one per person photo; enrich: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pair)


# --- models --------------------------------------------------------------------------------


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from common.tinymodels import build_all

    out = Path(args.out_dir)
    written = build_all(out)
    env = {
        "SYNTHPIPE_VL_MODEL": str(written["vl"]),
        "SYNTHPIPE_EDIT_MODEL": str(written["edit"]),
        "SYNTHPIPE_EDIT__PLUS_MODEL": str(written["edit-plus"]),
        **tiny_run_settings(),
    }
    plus = {"SYNTHPIPE_EDIT__BACKEND_TRYON": "qwen-image-edit-plus", "SYNTHPIPE_PAIRING__MAX_GARMENTS": "2"}
    human = "\n".join([*(f"export {k}={v}" for k, v in env.items()),
                       "# to edit try-on sets with the multi-image editor (person + garment photos):",
                       *(f"# export {k}={v}" for k, v in plus.items())])
    _emit(args, {"paths": {k: str(v) for k, v in written.items()}, "settings": env,
                 "multi_image_settings": plus}, human)
    return 0


def tiny_run_settings() -> dict[str, str]:
    """Settings that suit tiny random models (small images, few steps) on a CPU."""
    return {
        "SYNTHPIPE_VL__MIN_PIXELS": str(4 * 28 * 28),
        "SYNTHPIPE_VL__MAX_PIXELS": str(16 * 28 * 28),
        "SYNTHPIPE_VL__MAX_NEW_TOKENS": "2048",
        "SYNTHPIPE_EDIT__STEPS": "2",
        "SYNTHPIPE_EDIT__PLUS_STEPS": "2",
        "SYNTHPIPE_EDIT__MAX_SIDE": "64",
    }


@command
def add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="model checkpoints")
    ms = p.add_subparsers(dest="models_command", required=True)
    t = ms.add_parser("tiny", help="write tiny random-weight VL and edit checkpoints to OUT_DIR")
    t.add_argument("out_dir")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_models_tiny)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


# --- export --------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from common.export import export

    ctx = _context()
    report = export(ctx.db, ctx.storage, Path(args.out_dir), fmt=args.format, min_confidence=args.min_confidence)
    _emit(args, report.as_dict(),
          f"exported {report.rows} rows to {report.out_dir} ({report.format}); "
          f"{report.filtered} below --min-confidence\nsummary: {report.summary_path}\n"
          f"contact sheet: {report.contact_sheet}")
    return 0


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


@command
def add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write the dataset, a summary and a contact sheet to OUT_DIR")
    p.add_argument("out_dir")
    p.add_argument("--format", choices=["imagefolder", "parquet"], default="imagefolder")
    p.add_argument("--min-confidence", type=_unit_interval, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


# --- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from common.demo import run_demo

    result = run_demo(Path(args.dir), persons=args.persons, garments=args.garments, characters=args.characters)
    _emit(args, result, "\n".join([
        f"demo finished in {result['seconds']:.0f} s",
        f"jobs: {json.dumps(result['jobs'])}",
        f"dataset ({result['rows']} rows): {result['dataset']}",
        f"  load it: datasets.load_dataset({result['dataset']!r})",
        f"contact sheet: {result['contact_sheet']}",
    ]))
    return 0


@command
def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="offline end to end on tiny models: ingest → pair → VL → edit → export")
    p.add_argument("--dir", default="synthpipe-demo", help="where the demo keeps its database, photos and dataset")
    p.add_argument("--persons", type=_positive, default=4)
    p.add_argument("--garments", type=_positive, default=6)
    p.add_argument("--characters", type=_positive, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


# --- distributed mode ----------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    import importlib
    import os

    from common.errors import ConfigError, InputError

    stage = args.stage
    if args.gpu is not None:  # before anything can import torch and see every card
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if args.batch_size is not None:
        if stage == "scrape":
            raise InputError("--batch-size applies to vl and edit workers (a crawl batch is one job)")
        os.environ[f"SYNTHPIPE_{stage.upper()}__BATCH_SIZE"] = str(args.batch_size)
    from celery import signals

    from common.celery_app import TASK_MODULES, get_app
    from common.db import get_database, reset_databases
    from common.settings import get_settings, reset_settings
    from common.transport import Sweeper, reset_worker_context

    reset_settings()
    settings = get_settings()
    if not settings.distributed:
        raise ConfigError("synthpipe worker runs in distributed mode: set SYNTHPIPE_BROKER_URL")
    get_database(settings.database_url)  # fail now, not on the first task, if the schema is old
    reset_databases()  # no connection may be shared with forked pool processes
    app = get_app(settings)
    importlib.import_module(TASK_MODULES[stage])
    # Pool processes make their own engines (and load their own model on first use).
    signals.worker_process_init.connect(lambda **_: reset_worker_context(), weak=False)
    sweeper = Sweeper(stage, settings.celery.sweep_interval_s, settings.celery.resend_after_s)
    signals.worker_ready.connect(lambda **_: sweeper.start(), weak=False)
    pool = args.pool or ("solo" if args.concurrency == 1 else "prefork")
    card = f"gpu{args.gpu}" if args.gpu is not None else "cpu"
    app.worker_main([
        "worker", "--queues", stage, "--concurrency", str(args.concurrency), "--pool", pool,
        "--hostname", f"{stage}-{card}-{os.getpid()}@%h", "--loglevel", args.loglevel, "--task-events",
        "--without-mingle", "--without-gossip",
    ])
    return 0


@command
def add_worker(sub: Any) -> None:
    p = sub.add_parser("worker", help="distributed mode: a Celery worker for one stage's queue")
    p.add_argument("stage", choices=["scrape", "vl", "edit"])
    p.add_argument("--gpu", type=int, default=None, help="pin this worker to GPU I (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--batch-size", type=_positive, default=None, help="jobs per model call (vl, edit)")
    p.add_argument("--concurrency", type=_positive, default=1,
                   help="processes; model workers keep 1 per GPU (each process loads its own model)")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], default=None,
                   help="default: solo for concurrency 1 (the model lives in the worker process), else prefork")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)


def cmd_flower(args: argparse.Namespace) -> int:
    from common.celery_app import get_app
    from common.errors import ConfigError
    from common.settings import get_settings

    settings = get_settings()
    fl = settings.flower
    if not fl.basic_auth or ":" not in fl.basic_auth:
        raise ConfigError("flower.basic_auth (SYNTHPIPE_FLOWER__BASIC_AUTH) must be set to user:password")
    app = get_app(settings)
    app.start(["flower", f"--port={args.port or fl.port}", f"--address={args.address or fl.address}",
               f"--basic-auth={fl.basic_auth}", "--persistent=False"])
    return 0


@command
def add_flower(sub: Any) -> None:
    p = sub.add_parser("flower", help="distributed mode: Flower monitoring behind basic auth")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--address", default=None)
    p.set_defaults(func=cmd_flower)


# --- crawl ---------------------------------------------------------------------------------


def cmd_crawl(args: argparse.Namespace) -> int:
    import random

    from common.errors import InputError
    from worker_scrape.service import queue_crawl

    path = Path(args.sites)
    if not path.is_file():
        raise InputError(f"no such site file: {path}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    ctx = _context()
    with ctx.db.session() as s:
        report = queue_crawl(s, path, batches=args.batches, seed=seed, max_pages=args.max_pages)
    lines = [f"queued {report.queued} crawl batches ({report.existing} already queued), seed {seed}"]
    lines += [f"  {b['category']}/{b['site']}" for b in report.batches]
    _emit(args, report.as_dict(), "\n".join(lines))
    return 0


@command
def add_crawl(sub: Any) -> None:
    p = sub.add_parser("crawl", help="queue crawl batches sampled from a site file (run them with `run`)")
    p.add_argument("--sites", required=True, help="site file (YAML): categories, sites, rules")
    p.add_argument("--batches", type=_positive, default=1)
    p.add_argument("--max-pages", type=_positive, default=None, help="pages per batch (default: each site's max_pages)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random, printed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_crawl)
