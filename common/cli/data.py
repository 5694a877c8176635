"""Commands that put data in: db, ingest, pair (import and export live in ``common.cli.dataset``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.cli.base import context, emit, positive
from common.core.errors import InputError


def cmd_db(args: argparse.Namespace) -> int:
    from common.store.db import get_database

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
    from common.dataset.ingest import ingest

    path = Path(args.path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    ctx = context()
    report = ingest(path, args.role, db=ctx.db, storage=ctx.storage, settings=ctx.settings)
    lines = [f"registered {report.registered}, duplicates {report.duplicates}, rejected {len(report.rejected)}"]
    lines += [f"  rejected {r['path']}: {r['reason']}" for r in report.rejected]
    emit(args, report.as_dict(), "\n".join(lines))
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    from common.domain.pairing import pair

    ctx = context()
    with ctx.db.session() as s:
        report = pair(s, ctx.settings, args.recipe, limit=args.limit, seed=args.seed)
    emit(args, report.as_dict(),
         f"{args.recipe}: {report.created} new sets ({report.jobs} vl jobs queued), {report.existing} existed")
    return 0


def register(sub: Any) -> None:
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

    p = sub.add_parser("pair", help="make item sets from stored photos and queue their vl jobs")
    p.add_argument("--recipe", required=True, choices=["tryon", "enrich"])
    p.add_argument("--limit", type=positive, default=None,
                   help="most new sets (tryon default: one per person photo; enrich: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pair)
