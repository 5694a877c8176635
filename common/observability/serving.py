"""Serving a worker's ``/metrics``: the sum over its processes (a process that is gone is marked
dead, so its share of the live gauges leaves the sum while its counts stay in it) and its GPU."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from common.core.errors import ConfigError
from common.observability.gpu import GpuCollector
from common.observability.metrics import enable_multiprocess, process_started

if TYPE_CHECKING:
    from common.core.settings import Settings

log = logging.getLogger(__name__)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


class _MultiProcess:
    """Sums every process's files; first marks dead the processes that are gone."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self.path = path
        self._collector = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        for pid in {int(m.group(1)) for f in os.listdir(self.path) if (m := _LIVE_FILE.search(f))}:
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, self.path)
        return self._collector.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child the pool has not reaped yet is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def serve_worker(stage: str, port: int, settings: Settings, *, pool: str) -> Any:
    """Serve this worker's metrics on ``settings.metrics.address:port``: the sum over its
    processes, and its GPU. Call before the pool starts; hooks the Celery process signals."""
    from celery import signals
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    path = enable_multiprocess(settings.metrics.multiproc_dir)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MultiProcess(str(path)))  # type: ignore[arg-type]
    if settings.metrics.gpu:
        registry.register(GpuCollector())  # type: ignore[arg-type]
    try:
        server, _thread = start_http_server(port, addr=settings.metrics.address, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot serve on {settings.metrics.address}:{port}: "
                          f"{exc.strerror or exc}") from None

    def child_started(**_: Any) -> None:
        process_started(stage)

    def child_stopping(**_: Any) -> None:
        multiprocess.mark_process_dead(os.getpid(), str(path))

    if pool == "prefork":
        signals.worker_process_init.connect(child_started, weak=False)
        signals.worker_process_shutdown.connect(child_stopping, weak=False)
    else:
        process_started(stage)
    log.info("metrics of %s worker on http://%s:%d/metrics", stage, settings.metrics.address, port)
    return server
