"""The ``synthpipe`` command. Imports stay light: heavy libraries load inside the commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from common.errors import ConfigError, InputError, SynthpipeError

log = logging.getLogger("synthpipe")

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    """``--json``: one JSON object on stdout; otherwise the human text."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")


def _context():  # -> StageContext
    from common.db import get_database
    from common.runner import StageContext
    from common.settings import get_settings
    from common.storage import get_storage

    settings = get_settings()
    db = get_database(settings.database_url)
    if settings.distributed:
        from common.transport import install_dispatcher

        install_dispatcher(db)
    return StageContext(settings=settings, db=db, storage=get_storage(settings.storage_url))


# --- commands ------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from common.db import get_database

    db = get_database(ensure=False)
    if args.db_command == "upgrade":
        db.upgrade(args.revision)
        print(f"database at revision {db.current_revision()}")
    elif args.db_command == "downgrade":
        db.downgrade(args.revision)
        print(f"database at revision {db.current_revision()}")
    else:
        print(f"current {db.current_revision()} (head {db.head_revision()})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from common.ingest import ingest

    path = Path(args.path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    ctx = _context()
    report = ingest(path, args.role, db=ctx.db, storage=ctx.storage, settings=ctx.settings)
    lines = [f"registered {report.registered}, duplicates {report.duplicates}, rejected {len(report.rejected)}"]
    lines += [f"  rejected {r['path']}: {r['reason']}" for r in report.rejected]
    _emit(args, report.as_dict(), "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from common.status import status_report, status_text

    ctx = _context()
    report = status_report(ctx.db)
    _emit(args, report, status_text(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from common.models import STAGES
    from common.runner import run_all

    ctx = _context()
    stages = STAGES if args.stage == "all" else (args.stage,)
    results = run_all(ctx, stages)
    summary = {s: {"claimed": r.claimed, **r.by_status} for s, r in results.items()}
    _emit(args, summary, "\n".join(f"{s}: {json.dumps(v)}" for s, v in summary.items()))
    return 0


# --- parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line naming the fix; ``--help`` still prints the full usage.
    Subcommand parsers are made of the same class, so they do the same."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="synthpipe",
        description="Make (source image, instruction, edited image) training data: crawl or ingest "
        "photos, analyse them with a vision-language model, edit them with a diffusion model, export.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database schema (Alembic)")
    dbs = db.add_subparsers(dest="db_command", required=True)
    up = dbs.add_parser("upgrade", help="upgrade the schema (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = dbs.add_parser("downgrade", help="downgrade the schema to REVISION (base: drop everything)")
    down.add_argument("revision")
    dbs.add_parser("current", help="print the schema revision")
    db.set_defaults(func=cmd_db)

    ing = sub.add_parser("ingest", help="register the images under PATH")
    ing.add_argument("path")
    ing.add_argument("--role", required=True, choices=["person", "garment", "character"])
    ing.add_argument("--json", action="store_true")
    ing.set_defaults(func=cmd_ingest)

    st = sub.add_parser("status", help="jobs per stage and status, assets per role")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    run = sub.add_parser("run", help="local mode: process queued jobs until idle")
    run.add_argument("--stage", choices=["scrape", "vl", "edit", "all"], default="all")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_run)

    for register in _EXTENSIONS:
        register(sub)
    return p


# Commands added by the stage modules (pair, crawl, worker, export, models, demo, flower).
_EXTENSIONS: list[Callable[[Any], None]] = []


def _register_extensions() -> None:
    from common import cli_more

    _EXTENSIONS.extend(cli_more.REGISTER)


def setup_logging(level: int) -> None:
    """Our own loggers at ``level``; libraries only from WARNING, so output stays readable."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("synthpipe", "common", "worker_scrape", "worker_vl", "worker_edit"):
        logging.getLogger(name).setLevel(level)
    # transformers and diffusers log through their own verbosity; keep them to errors unless debugging
    for name in ("transformers", "diffusers"):
        quiet = "debug" if level <= logging.DEBUG else "error"
        os.environ.setdefault(f"{name.upper()}_VERBOSITY", quiet)  # read when the library configures itself
        logging.getLogger(name).setLevel(quiet.upper())


def main(argv: list[str] | None = None) -> int:
    _register_extensions()
    parser = build_parser()
    args = parser.parse_args(argv)
    from common.settings import get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"synthpipe: {exc}", file=sys.stderr)
        return 2
    setup_logging(logging.DEBUG if args.verbose else getattr(logging, settings.log_level))
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"synthpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except SynthpipeError as exc:
        print(f"synthpipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("synthpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
