"""``synthpipe generate``: queue new images of a character (FLUX + its LoRA)."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.base import context, emit, positive


def _adapter_choice(text: str) -> str:
    if text in ("latest", "none") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"must be an adapter id, latest or none, got {text}")


def cmd_generate(args: argparse.Namespace) -> int:
    from worker_generate.service import queue_generate

    ctx = context()
    with ctx.db.session() as s:
        report = queue_generate(s, ctx.settings, args.character, args.n, adapter=args.adapter, seed=args.seed)
    where = "the generate workers" if ctx.settings.distributed else "`synthpipe run --stage generate`"
    adapter = f"adapter {report['adapter_id']}" if report["adapter_id"] else "no adapter"
    human = [f"queued {report['queued']} generate jobs ({report['existing']} already queued) for character asset "
             f"{report['character_asset_id']} with {adapter}, trigger {report['trigger']!r}, seed {report['seed']}; "
             f"run them with {where}"]
    human += [f"  {j['prompt']}" for j in report["jobs"]]
    emit(args, report, "\n".join(human))
    return 0


def register(sub: Any) -> None:
    g = sub.add_parser("generate", help="queue N new images of a character photo (FLUX text-to-image + its LoRA)")
    g.add_argument("--character", required=True, metavar="ASSET",
                   help="the character photo: an asset id, its sha256 or the path it was ingested from")
    g.add_argument("--n", type=positive, required=True, help="how many images")
    g.add_argument("--adapter", type=_adapter_choice, default=None,
                   help="ID, latest (the newest adapter of this character, none if it has none) or none "
                   "(default: generate.adapter)")
    g.add_argument("--seed", type=int, default=None, help="seed of the prompts and noise (default: random, printed)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)
