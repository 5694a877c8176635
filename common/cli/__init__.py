"""The ``synthpipe`` command. Imports stay light: heavy libraries load inside the commands.

Each command group is a module here with a ``register(subparsers)`` function; the parser is
built anew on every :func:`main` call, so ``main`` can be called repeatedly in one process.

Exit codes: 0 done; 1 a failure while working (a job store or storage error); 2 a usage,
input or settings error (one line on stderr, wherever it was raised); 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from common.cli.base import Parser
from common.core.errors import ConfigError, InputError, SynthpipeError

log = logging.getLogger("synthpipe")

#: the command groups, in the order ``--help`` lists them
COMMAND_MODULES = (
    "common.cli.data",
    "common.cli.dataset",
    "common.cli.pipeline",
    "common.cli.score",
    "common.cli.workers",
    "common.cli.serving",
    "common.cli.offline",
    "common.cli.review",
    "common.cli.train",
    "common.cli.generate",
    "common.cli.monitor",
)


def build_parser() -> Parser:
    p = Parser(
        prog="synthpipe",
        description="Make (source image, instruction, edited image) training data: crawl or ingest "
        "photos, analyse them with a vision-language model, edit them with a diffusion model, score, "
        "review, train and export.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def setup_logging(level: int) -> None:
    """Our own loggers at ``level``; libraries only from WARNING, so output stays readable."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("synthpipe", "common", "worker_scrape", "worker_vl", "worker_edit", "worker_score",
                 "worker_train", "worker_generate"):
        logging.getLogger(name).setLevel(level)
    # transformers and diffusers log through their own verbosity; keep them to errors unless debugging
    for name in ("transformers", "diffusers"):
        quiet = "debug" if level <= logging.DEBUG else "error"
        os.environ.setdefault(f"{name.upper()}_VERBOSITY", quiet)  # read when the library configures itself
        logging.getLogger(name).setLevel(quiet.upper())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    from common.core import stages
    from common.core.settings import get_settings

    try:
        settings = get_settings()
        stages.load_plugins(settings.plugins)
    except ConfigError as exc:
        print(f"synthpipe: {_one_line(exc)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else getattr(logging, settings.log_level))
    try:
        return int(args.func(args) or 0)
    except (InputError, ConfigError) as exc:  # usage, input and settings errors: exit 2, one line
        print(f"synthpipe {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except SynthpipeError as exc:
        print(f"synthpipe {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # an optional extra that is not installed: say which
        from common.core.extras import missing_extra

        hint = missing_extra(exc)
        if hint is None:
            raise
        print(f"synthpipe {args.command}: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthpipe: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMAND_MODULES", "build_parser", "main"]
