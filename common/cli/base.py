"""What every command module shares: output, the stage context, argument types, the parser."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from common.runtime.runner import StageContext


def emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    """``--json``: one JSON object on stdout; otherwise the human text."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")


def context() -> StageContext:
    """The stage context of a command: settings, database (upgraded), storage; in distributed
    mode the database also sends the messages of the jobs a command queues."""
    from common.core.settings import get_settings
    from common.runtime.runner import StageContext
    from common.store.db import get_database
    from common.store.storage import get_storage

    settings = get_settings()
    db = get_database(settings.database_url, settings=settings)
    if settings.distributed:
        from common.queue.dispatch import install_dispatcher

        install_dispatcher(db)
    return StageContext(settings=settings, db=db, storage=get_storage(settings.storage_url))


def positive(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def stage_choices(*, with_all: bool = False) -> list[str]:
    """Stage names from the registry, for ``choices=``."""
    from common.core import stages

    return [*stages.names(), *(["all"] if with_all else [])]


class Parser(argparse.ArgumentParser):
    """Usage errors are one line naming the fix; ``--help`` still prints the full usage.
    Subcommand parsers are made of the same class, so they do the same."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
