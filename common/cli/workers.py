"""Distributed-mode commands: worker, flower."""

from __future__ import annotations

import argparse
from typing import Any

from common.cli.base import positive, stage_choices
from common.core.errors import ConfigError, InputError


def cmd_worker(args: argparse.Namespace) -> int:
    import importlib
    import os

    from common.core import stages

    stage = stages.get(args.stage)
    if args.gpu is not None:  # before anything can import torch and see every card
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if args.batch_size is not None:
        if stage.batch_size_setting is None:
            raise InputError(f"--batch-size does not apply to {stage.name} workers (one job per batch)")
        os.environ["SYNTHPIPE_" + stage.batch_size_setting.upper().replace(".", "__")] = str(args.batch_size)
    if args.backends:
        if stage.lanes_setting is None or stage.lane_field != "backend":
            raise InputError(f"--backends does not apply to {stage.name} workers (only edit jobs name a backend)")
        os.environ["SYNTHPIPE_" + stage.lanes_setting.upper().replace(".", "__")] = args.backends
    if args.overlap:
        if stage.phases is None:
            raise InputError(f"--overlap does not apply to {stage.name} workers (the stage has no model phases)")
        os.environ["SYNTHPIPE_JOBS__OVERLAP"] = "true"
    from celery import signals

    from common.core.settings import get_settings, reset_settings
    from common.queue.app import get_app
    from common.queue.consumer import reset_worker_context
    from common.queue.sweeper import Sweeper
    from common.queue.tasks import task_for
    from common.store.db import get_database, reset_databases

    reset_settings()
    settings = get_settings()
    if not settings.distributed:
        raise ConfigError("synthpipe worker runs in distributed mode: set SYNTHPIPE_BROKER_URL")
    get_database(settings.database_url)  # fail now, not on the first task, if the schema is old
    reset_databases()  # no connection may be shared with forked pool processes
    app = get_app(settings)
    if stage.tasks_module:
        importlib.import_module(stage.tasks_module)
    task_for(stage.name)
    # Pool processes make their own engines (and load their own model on first use).
    signals.worker_process_init.connect(lambda **_: reset_worker_context(), weak=False)
    sweeper = Sweeper(stage.name, settings.celery.sweep_interval_s, settings.celery.resend_after_s)
    signals.worker_ready.connect(lambda **_: sweeper.start(), weak=False)
    pool = args.pool or ("solo" if args.concurrency == 1 else stage.pool)
    if args.metrics_port is not None:  # before the pool forks: children write files the parent sums
        from common.observability.serving import serve_worker

        serve_worker(stage.name, args.metrics_port, settings, pool=pool)
    card = f"gpu{args.gpu}" if args.gpu is not None else "cpu"
    app.worker_main([
        "worker", "--queues", ",".join(stage.queues(settings)), "--concurrency", str(args.concurrency), "--pool", pool,
        "--hostname", f"{stage.name}-{card}-{os.getpid()}@%h", "--loglevel", args.loglevel, "--task-events",
        "--without-mingle", "--without-gossip",
    ])
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from common.core.settings import get_settings
    from common.queue.app import get_app

    settings = get_settings()
    fl = settings.flower
    if not fl.basic_auth or ":" not in fl.basic_auth:
        raise ConfigError("flower.basic_auth (SYNTHPIPE_FLOWER__BASIC_AUTH) must be set to user:password")
    app = get_app(settings)
    guard_flower_metrics()
    app.start(["flower", f"--port={args.port or fl.port}", f"--address={args.address or fl.address}",
               f"--basic-auth={fl.basic_auth}", "--persistent=False"])
    return 0


def guard_flower_metrics() -> None:
    """Put Flower's ``/metrics`` behind the basic auth its pages require (Flower serves it to
    anyone): its handler's ``get`` gets Tornado's ``authenticated``, as Flower's own views have.
    ``/healthcheck`` stays open for probes; it says nothing but OK."""
    import tornado.web
    from flower.views.monitor import Metrics

    if not getattr(Metrics.get, "synthpipe_guarded", False):
        guarded = tornado.web.authenticated(Metrics.get)
        guarded.synthpipe_guarded = True  # type: ignore[attr-defined]
        Metrics.get = guarded  # type: ignore[method-assign]


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="distributed mode: a Celery worker for one stage's queue")
    p.add_argument("stage", choices=stage_choices())
    p.add_argument("--gpu", type=int, default=None,
                   help="pin this worker to GPU I (CUDA_VISIBLE_DEVICES); a vl worker whose model is served (vl.backend=openai) needs none")
    p.add_argument("--batch-size", type=positive, default=None, help="jobs per model call (model stages)")
    p.add_argument("--overlap", action="store_true",
                   help="each task goes on claiming: batch k+1 is prepared and k-1 recorded while the model runs k "
                        "(stages with phases: vl, edit, generate; jobs.overlap)")
    p.add_argument("--concurrency", type=positive, default=1,
                   help="processes; model workers keep 1 per GPU (each process loads its own model)")
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], default=None,
                   help="default: solo for concurrency 1 (the model lives in the worker process), else the stage's "
                        "pool (threads for scrape, whose threads share per-host politeness; prefork otherwise)")
    p.add_argument("--backends", default=None,
                   help="edit workers: serve only these backends, comma-separated (their queues edit.<backend>, and only "
                        "jobs that name one: best-of-N candidates); default: every edit job (edit.serve_backends)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve this worker's Prometheus metrics on metrics.address:PORT (summed over its processes)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    f = sub.add_parser("flower", help="distributed mode: Flower monitoring (its pages, API and /metrics) behind basic auth")
    f.add_argument("--port", type=int, default=None)
    f.add_argument("--address", default=None)
    f.set_defaults(func=cmd_flower)
