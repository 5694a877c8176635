"""``synthpipe score``: re-decide scored edits from stored scores, or queue them for rescoring."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.base import context, emit
from common.core.errors import InputError


def _scorer_list(text: str) -> list[str]:
    from common.core.backends import SCORERS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCORERS]
    if not names or unknown:
        raise InputError(f"--scorers: unknown scorer(s) {', '.join(unknown) or '(none given)'}; allowed: "
                         f"{', '.join(sorted(SCORERS))}")
    return names


def _chunk(text: str) -> int:
    from common.domain.decide import MAX_CHUNK

    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= MAX_CHUNK:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of edits from 1 to {MAX_CHUNK}")
    return n


def _redecide(ctx: Any, chunk: int | None) -> dict[str, Any]:
    """Every scored edit decided again, chunk by committed chunk, with a bar of edits/s on a terminal."""
    import sys

    from common.core.progress import bar
    from common.domain.decide import REDECIDE_CHUNK, redecide_all, scored_edits

    # the total costs a count of the scores: only where the bar is shown
    total = scored_edits(ctx.db) if sys.stderr.isatty() else None
    with bar(desc="redecide", total=total, unit="edit") as shown:
        return redecide_all(ctx.db, ctx.settings, chunk=chunk or REDECIDE_CHUNK, on_chunk=shown.update).as_dict()


def _reselect(ctx: Any) -> dict[str, Any]:
    """Best-of-N: every set's winner selected again from the new decisions (no model)."""
    from common.domain.selection import reselect_all

    return reselect_all(ctx.db, ctx.settings).as_dict()


def cmd_score(args: argparse.Namespace) -> int:
    ctx = context()
    if args.redecide:
        if args.scorers:
            raise InputError("--scorers goes with --rescore; --redecide runs no scorer")
        decided = _redecide(ctx, args.chunk)
        selected = decided["reselected"] = _reselect(ctx)
        emit(args, decided, "\n".join([
            f"re-decided {decided['decided']} edits from stored scores ({decided['changed']} changed): "
            f"{decided['accepted']} accepted, {decided['rejected']} rejected",
            *(f"  {code}: {n}" for code, n in decided["reasons"].items()),
            *([f"re-selected {selected['sets']} best-of-N sets ({selected['changed']} winners changed)"]
              if selected["sets"] else []),
        ]))
        return 0
    if args.chunk is not None:
        raise InputError("--chunk goes with --redecide")
    from sqlalchemy import select

    from common.domain.scorequeue import queue_score
    from common.store.rows import Edit, utcnow

    scorers = _scorer_list(args.scorers) if args.scorers else list(ctx.settings.score.scorers)
    token = utcnow().strftime("%Y%m%dT%H%M%S%f")
    queued = 0
    with ctx.db.session() as s:
        rows = s.execute(select(Edit.id, Edit.item_set_id).order_by(Edit.id)).all()
        for edit_id, item_set_id in rows:
            queued += queue_score(s, edit_id, scorers, rescore=token, item_set_id=item_set_id) is not None
    report: dict[str, Any] = {"queued": queued, "edits": len(rows), "scorers": sorted(scorers)}
    emit(args, report, f"queued {queued} score jobs ({', '.join(sorted(scorers))}); other scorers' scores are "
         "kept; run them with synthpipe run --stage score (or a score worker)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("score", help="re-decide scored edits (no model) or queue rescoring of chosen scorers")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--redecide", action="store_true",
                      help="decide every scored edit again from its stored scores and the current thresholds")
    mode.add_argument("--rescore", action="store_true",
                      help="queue every edit for scoring again by --scorers (default: score.scorers)")
    p.add_argument("--scorers", help="comma-separated scorer names, with --rescore")
    p.add_argument("--chunk", type=_chunk, default=None,
                   help="with --redecide: edits decided and committed per transaction (default 2000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)
