"""Monitoring: ``synthpipe metrics`` serves the store's and the broker's gauges to Prometheus."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from common.core.errors import ConfigError


def cmd_metrics(args: argparse.Namespace) -> int:
    from common.cli.base import context
    from common.observability.collector import serve_store
    from common.queue.broker import BrokerQueues

    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("synthpipe metrics needs prometheus-client: pip install 'synthpipe[distributed]'") from None
    ctx = context()
    m = ctx.settings.metrics
    port = args.port or m.port
    address = args.address or m.address
    try:
        queues = BrokerQueues(ctx.settings) if ctx.settings.broker_url else None
        server = serve_store(ctx.db, ctx.settings, port, address, queues)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None
    sys.stderr.write(f"metrics on http://{address}:{server.server_port}/metrics (Ctrl-C stops)\n")
    sys.stderr.flush()
    threading.Event().wait()  # the server thread answers; this one waits for Ctrl-C or a signal
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("metrics", help="serve jobs per stage and status, failures by reason and queue "
                       "lengths at /metrics for Prometheus")
    p.add_argument("--port", type=int, default=None, help="default: metrics.port (9464)")
    p.add_argument("--address", default=None, help="default: metrics.address (127.0.0.1)")
    p.set_defaults(func=cmd_metrics)
