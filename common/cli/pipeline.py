"""Commands that run and inspect the pipeline: crawl, run, status, jobs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.cli.base import context, emit, positive, stage_choices
from common.core.errors import InputError


def cmd_crawl(args: argparse.Namespace) -> int:
    import random

    from worker_scrape.service import queue_crawl  # the crawl plan is the scrape worker's

    path = Path(args.sites)
    if not path.is_file():
        raise InputError(f"no such site file: {path}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    ctx = context()
    with ctx.db.session() as s:
        report = queue_crawl(s, path, batches=args.batches, seed=seed, max_pages=args.max_pages)
    lines = [f"queued {report.queued} crawl batches ({report.existing} already queued), seed {seed}"]
    lines += [f"  {b['category']}/{b['site']}" for b in report.batches]
    emit(args, report.as_dict(), "\n".join(lines))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from common.core import stages
    from common.runtime.runner import run_all
    from common.store.rows import utcnow

    ctx = context()
    if args.concurrency is not None:
        ctx.settings.scrape.concurrency = args.concurrency
    if args.overlap:
        ctx.settings.jobs.overlap = True
    chosen = stages.names() if args.stage == "all" else (args.stage,)
    started = utcnow()
    results = run_all(ctx, chosen)
    summary: dict[str, Any] = {s: {"claimed": r.claimed, **r.by_status} for s, r in results.items()}
    best = _best_of_n(ctx, started, summary.get("edit"))
    if best is not None:
        summary["best_of_n"] = best
    emit(args, summary, "\n".join(f"{s}: {json.dumps(v)}" for s, v in summary.items()))
    return 0


def _best_of_n(ctx: Any, started: Any, edit: dict[str, int] | None) -> dict[str, Any] | None:
    """The run's best-of-N figures (sets selected during it), when it asked for candidates or
    selected a set of several; None otherwise."""
    from sqlalchemy import func, select

    from common.domain.editplan import EARLY_STOP
    from common.domain.selection import summary
    from common.store.rows import Job

    with ctx.db.session() as s:
        best = summary(s, since=started)
        asked = ctx.settings.edit.candidates > 1 or ctx.settings.edit.ensemble
        if not best["sets"] or not (asked or best["candidates_expected"] > best["sets"]):
            return None
        stopped = s.scalar(select(func.count()).where(Job.reason == EARLY_STOP, Job.stage == "edit",
                                                      Job.finished_at >= started)) or 0
    budget = ctx.candidate_budget
    return {"candidates_made": (edit or {}).get("succeeded", 0), **best, "early_stopped": int(stopped),
            "extra_candidates_planned": budget.used if budget is not None else None}


def cmd_status(args: argparse.Namespace) -> int:
    from common.observability.status import status_report, status_text

    ctx = context()
    if args.watch:
        if args.interval <= 0:
            raise InputError(f"--interval must be above 0 seconds, got {args.interval}")
        from common.observability.watch import watch
        from common.store import jobs as jobstore

        return watch(lambda: jobstore.counts(ctx.db), interval=args.interval)
    report = status_report(ctx.db)
    emit(args, report, status_text(report))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from common.store import jobs as jobstore

    ctx = context()
    statuses = [args.status] if args.status else None
    if args.jobs_command == "list":
        rows = jobstore.list_jobs(ctx.db, stage=args.stage, statuses=statuses, reason=args.reason,
                                  limit=args.limit)
        human = "\n".join(f"{r['id']:>6} {r['stage']:<8} {r['status']:<9} {r['reason'] or '-':<28} "
                          f"{(r['error_message'] or '')[:80]}" for r in rows) or "no jobs match"
        emit(args, {"jobs": rows}, human)
        return 0
    if args.jobs_command == "retry":
        changed = jobstore.retry_jobs(ctx.db, stage=args.stage, statuses=statuses or ["failed", "dead"],
                                      reason=args.reason, actor=args.actor)
        verb = "queued again"
    else:
        changed = jobstore.cancel_jobs(ctx.db, stage=args.stage, statuses=statuses or ["queued"],
                                       reason=args.reason, actor=args.actor)
        verb = "cancelled"
    emit(args, {args.jobs_command: len(changed), "ids": changed}, f"{len(changed)} job(s) {verb}")
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser("crawl", help="queue crawl batches sampled from a site file (run them with `run`)")
    c.add_argument("--sites", required=True, help="site file (YAML): categories, sites, rules")
    c.add_argument("--batches", type=positive, default=1)
    c.add_argument("--max-pages", type=positive, default=None, help="pages per batch (default: each site's max_pages)")
    c.add_argument("--seed", type=int, default=None, help="sampling seed (default: random, printed)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_crawl)

    run = sub.add_parser("run", help="local mode: process queued jobs until idle")
    run.add_argument("--stage", choices=stage_choices(with_all=True), default="all")
    run.add_argument("--concurrency", type=positive, default=None,
                     help="sites crawled at once (default: scrape.concurrency)")
    run.add_argument("--overlap", action="store_true",
                     help="prepare batch k+1 and record k-1 while the model runs k (vl, edit, generate; jobs.overlap)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="jobs per stage and status, assets per role")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true", help="a live view of counts and rates per stage (Ctrl-C stops)")
    st.add_argument("--interval", type=float, default=2.0, help="seconds between --watch frames")
    st.set_defaults(func=cmd_status)

    j = sub.add_parser("jobs", help="list, retry or cancel jobs (every change is recorded on the job)")
    js = j.add_subparsers(dest="jobs_command", required=True)
    from common.store.rows import STATUSES

    for name, what in (("list", "list jobs"), ("retry", "put failed or dead jobs back in the queue with fresh attempts"),
                       ("cancel", "cancel queued jobs")):
        p = js.add_parser(name, help=what)
        p.add_argument("--stage", choices=stage_choices(), default=None)
        p.add_argument("--status", choices=list(STATUSES), default=None,
                       help={"list": "default: every status", "retry": "default: failed and dead",
                             "cancel": "default: queued"}[name])
        p.add_argument("--reason", default=None, help="only jobs with this reason code")
        if name == "list":
            p.add_argument("--limit", type=positive, default=200)
        else:
            p.add_argument("--actor", default=None, help="who made the change (default: user@host)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_jobs)
