"""``synthpipe review``: the review page, reviewers and their script tokens."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from common.core.errors import InputError


def _read_password(name: str) -> str:
    """The password from stdin: typed twice at a terminal, else the first line of the input."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise InputError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_review(args: argparse.Namespace) -> int:
    from common.core.settings import get_settings
    from common.store.db import get_database

    settings = get_settings()
    db = get_database(settings.database_url)
    if args.review_command == "add-reviewer":
        from common.review.auth import add_reviewer

        password = _read_password(args.name)
        with db.session() as s:
            reviewer = add_reviewer(s, args.name, password, admin=args.admin)
            role = "admin" if reviewer.is_admin else "reviewer"
            stored = reviewer.name  # folded: Alice is stored (and logs in) as alice
        print(f"added {role} {stored}", file=sys.stderr)
        return 0
    if args.review_command == "token":
        from common.review.auth import new_token

        with db.session() as s:
            token = new_token(s, args.name)
        print(token)
        print(f"send it as `Authorization: Bearer <token>`; {args.name}'s previous token no longer works",
              file=sys.stderr)
        return 0
    from common.review.app import is_loopback, serve
    from common.store.storage import get_storage

    host = args.host or settings.review.host
    port = args.port or settings.review.port
    if not is_loopback(host) and not args.public:
        raise InputError(f"--host {host} is not a loopback address: add --public to serve other machines "
                         "(put it behind TLS)")
    print(f"review page on http://{host}:{port}/ (Ctrl-C stops it)", file=sys.stderr)
    serve(db, get_storage(settings.storage_url), settings.review, host=host, port=port)
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, got {text}")
    return value


def register(sub: Any) -> None:
    rv = sub.add_parser("review", help="the review page (default), reviewers and their tokens",
                        description="Serve the review page, or manage reviewers.")
    rv.add_argument("--host", help="bind address (default: review.host, 127.0.0.1)")
    rv.add_argument("--port", type=_port, help="port (default: review.port, 8765)")
    rv.add_argument("--public", action="store_true", help="allow a non-loopback --host")
    rs = rv.add_subparsers(dest="review_command", metavar="ACTION")
    add = rs.add_parser("add-reviewer", help="add a reviewer; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may see every reviewer's decisions")
    tok = rs.add_parser("token", help="print a new script token for NAME (replaces the previous one)")
    tok.add_argument("name")
    rv.set_defaults(func=cmd_review, review_command=None)
