"""Prometheus metrics: what workers did (counters, histograms) and what the store and broker hold.

Two kinds of endpoint serve ``/metrics``:

- **a worker** (``synthpipe worker STAGE --metrics-port P``): jobs recorded by status and reason
  code, batch sizes, batch and model-call latency, model load time, crawl pages and images per
  site, live worker processes, and the GPU the worker sees (``common.gpumetrics``: NVML).
  Prefork children each write their own files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus
  multiprocess mode); the parent serves their sum. A child that is gone is marked dead, so its
  share of the live gauges leaves the sum while its counts stay in it.
- **the store** (``synthpipe metrics``): jobs per stage and status, failures by reason code and
  assets per role and site, read from the database at scrape time (the store is the truth), and
  the length of each registered stage's broker queue.

Recording is a no-op when ``prometheus_client`` is not installed (it ships with the
``distributed`` extra), so the local runner never depends on it. Every name starts with
``synthpipe_``; :data:`SPECS` lists them all (the dashboard test checks its queries against it).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from common.db import Database
    from common.jobs import Outcome
    from common.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
NO_REASON = "none"  # label value of an outcome without a reason code (a plain success)
NO_SITE = "none"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its name, type, labels and which endpoint serves it."""

    name: str
    kind: Literal["counter", "histogram", "gauge"]
    help: str
    labels: tuple[str, ...]
    where: Literal["worker", "store", "gpu"]
    buckets: tuple[float, ...] = ()
    multiprocess_mode: str = "all"

    def samples(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this family."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("synthpipe_jobs_finished", "counter", "jobs recorded by workers, by the status written "
               "(queued: backing off for another attempt; lost: the claim no longer held the job) and reason code",
               ("stage", "status", "reason"), "worker"),
    MetricSpec("synthpipe_batch_size", "histogram", "jobs per claimed batch", ("stage",), "worker",
               buckets=SIZE_BUCKETS),
    MetricSpec("synthpipe_batch_seconds", "histogram", "wall time of one batch: prepare, model, finish, record",
               ("stage",), "worker", buckets=LATENCY_BUCKETS),
    MetricSpec("synthpipe_model_call_seconds", "histogram", "time of one model call over a batch",
               ("stage",), "worker", buckets=LATENCY_BUCKETS),
    MetricSpec("synthpipe_model_load_seconds", "histogram", "time to load a model onto its device",
               ("model",), "worker", buckets=LOAD_BUCKETS),
    MetricSpec("synthpipe_crawl_pages", "counter", "pages crawled per site, visited or failed",
               ("site", "outcome"), "worker"),
    MetricSpec("synthpipe_crawl_images", "counter", "images a crawl handled per site, by what became of them",
               ("site", "status"), "worker"),
    MetricSpec("synthpipe_worker_processes", "gauge", "worker processes alive (prefork children, or the solo worker)",
               ("stage",), "worker", multiprocess_mode="livesum"),
    MetricSpec("synthpipe_jobs", "gauge", "jobs in the store per stage and status", ("stage", "status"), "store"),
    MetricSpec("synthpipe_jobs_by_reason", "gauge", "jobs in the store that carry a reason code",
               ("stage", "status", "reason"), "store"),
    MetricSpec("synthpipe_assets", "gauge", "assets in the store per role and site", ("role", "site"), "store"),
    MetricSpec("synthpipe_queue_length", "gauge", "messages waiting in the broker queue of each stage",
               ("queue",), "store"),
    MetricSpec("synthpipe_store_up", "gauge", "1 when this scrape could read the store", (), "store"),
    MetricSpec("synthpipe_broker_up", "gauge", "1 when this scrape could read the broker's queues", (), "store"),
    MetricSpec("synthpipe_gpu_memory_used_bytes", "gauge", "GPU memory in use", ("gpu", "uuid", "name"), "gpu"),
    MetricSpec("synthpipe_gpu_memory_total_bytes", "gauge", "GPU memory in all", ("gpu", "uuid", "name"), "gpu"),
    MetricSpec("synthpipe_gpu_utilization_ratio", "gauge", "share of the last sample period a kernel ran (0-1)",
               ("gpu", "uuid", "name"), "gpu"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


def sample_names() -> set[str]:
    """Every sample name synthpipe's endpoints can show."""
    return {name for spec in SPECS for name in spec.samples()}


# --- worker side: recording ---------------------------------------------------------------------

_LOCK = threading.Lock()
_WORKER: dict[str, Any] = {}


def _worker_metrics() -> dict[str, Any] | None:
    """The worker-side metric objects, made on first use (after any multiprocess setup)."""
    if _WORKER:
        return _WORKER
    with _LOCK:
        if _WORKER:
            return _WORKER
        try:
            import prometheus_client as pc
        except ImportError:
            return None
        registry = pc.CollectorRegistry(auto_describe=True)
        made: dict[str, Any] = {"registry": registry}
        for spec in SPECS:
            if spec.where != "worker":
                continue
            short = spec.name.removeprefix("synthpipe_")
            if spec.kind == "counter":
                made[short] = pc.Counter(spec.name, spec.help, spec.labels, registry=registry)
            elif spec.kind == "histogram":
                made[short] = pc.Histogram(spec.name, spec.help, spec.labels, registry=registry,
                                           buckets=spec.buckets)
            else:
                made[short] = pc.Gauge(spec.name, spec.help, spec.labels, registry=registry,
                                       multiprocess_mode=spec.multiprocess_mode)  # type: ignore[arg-type]
        _WORKER.update(made)
        return _WORKER


def job_recorded(stage: str, status: str | None, outcome: Outcome) -> str | None:
    """Count one recorded job (``status`` as ``common.jobs.record`` returned it); returns ``status``."""
    m = _worker_metrics()
    if m is None:
        return status
    try:
        m["jobs_finished"].labels(stage, status or "lost", outcome.reason or NO_REASON).inc()
        result = outcome.result or {}
        if status == "succeeded" and "pages_visited" in result and "site" in result:
            site = str(result["site"] or NO_SITE)
            m["crawl_pages"].labels(site, "visited").inc(int(result.get("pages_visited") or 0))
            m["crawl_pages"].labels(site, "failed").inc(int(result.get("pages_failed") or 0))
            for what, n in (result.get("images_by_status") or {}).items():
                m["crawl_images"].labels(site, str(what).split(":", 1)[0]).inc(int(n))
    except Exception:  # metrics never break a batch
        log.warning("could not count a %s job", stage, exc_info=True)
    return status


def batch_done(stage: str, size: int, outcomes: Sequence[Outcome], seconds: float) -> None:
    """Observe one batch: its size, its wall time, and its model calls (the ``batch_seconds``
    the stage put in its results; one observation per distinct model call)."""
    m = _worker_metrics()
    if m is None:
        return
    try:
        m["batch_size"].labels(stage).observe(size)
        m["batch_seconds"].labels(stage).observe(seconds)
        calls = {float(o.result["batch_seconds"]) for o in outcomes
                 if o.result and isinstance(o.result.get("batch_seconds"), int | float)}
        for call in calls:
            m["model_call_seconds"].labels(stage).observe(call)
    except Exception:
        log.warning("could not observe a %s batch", stage, exc_info=True)


def model_call(stage: str, seconds: float) -> None:
    """Observe one model call (for runners that time the call themselves)."""
    m = _worker_metrics()
    if m is not None:
        m["model_call_seconds"].labels(stage).observe(seconds)


def model_loaded(model: str, seconds: float) -> None:
    m = _worker_metrics()
    if m is not None:
        m["model_load_seconds"].labels(model).observe(seconds)


def process_started(stage: str) -> None:
    """This process works for ``stage`` (a live gauge: it leaves the sum when the process dies)."""
    m = _worker_metrics()
    if m is not None:
        m["worker_processes"].labels(stage).set(1)


# --- worker side: serving -------------------------------------------------------------------------


def enable_multiprocess(base: Path | None) -> Path:
    """Point prometheus at a fresh directory of this worker's (under ``base``, or the system temp
    directory) before any metric exists, so prefork children write files the parent can sum.
    The directory is removed when the worker exits."""
    path = Path(tempfile.mkdtemp(prefix="synthpipe-metrics-", dir=base))
    os.environ[MULTIPROC_ENV] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    try:
        from prometheus_client import values
    except ImportError:
        return path
    values.ValueClass = values.get_value_class()  # in case prometheus_client was imported before
    _WORKER.clear()
    return path


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
        from common.gpumetrics import GpuCollector

        registry.register(GpuCollector())  # type: ignore[arg-type]
    try:
        server, _thread = start_http_server(port, addr=settings.metrics.address, registry=registry)
    except OSError as exc:
        from common.errors import ConfigError

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


# --- store side -----------------------------------------------------------------------------------


class StoreCollector:
    """Gauges read from the database (and the broker's queues) each time they are scraped."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self._broker: Any = None
        self._lock = threading.Lock()  # scrapes may come in parallel; they share one broker connection

    def collect(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._collect()))

    def _collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def family(name: str) -> Any:
            spec = SPEC_BY_NAME[name]
            return GaugeMetricFamily(name, spec.help, labels=spec.labels)

        up = family("synthpipe_store_up")
        try:
            jobs, reasons, assets = self._read_store()
        except Exception as exc:
            log.warning("metrics: cannot read the store: %s", exc)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            fam = family("synthpipe_jobs")
            for stage, by in jobs.items():
                for status, n in by.items():
                    fam.add_metric([stage, status], n)
            yield fam
            fam = family("synthpipe_jobs_by_reason")
            for labels, n in reasons:
                fam.add_metric(labels, n)
            yield fam
            fam = family("synthpipe_assets")
            for labels, n in assets:
                fam.add_metric(labels, n)
            yield fam
        if self.settings.broker_url:
            yield from self._broker_families(family)

    def _read_store(self) -> tuple[dict[str, dict[str, int]], list[tuple[list[str], int]], list[tuple[list[str], int]]]:
        from sqlalchemy import func, select

        from common import jobs as jobstore
        from common.models import Asset, Job

        jobs = jobstore.counts(self.db)
        with self.db.session() as s:
            reasons = [([stage, status, str(reason)], n) for stage, status, reason, n in s.execute(
                select(Job.stage, Job.status, Job.reason, func.count()).where(Job.reason.is_not(None))
                .group_by(Job.stage, Job.status, Job.reason))]
            assets = [([role, site or NO_SITE], n) for role, site, n in s.execute(
                select(Asset.role, Asset.site, func.count()).group_by(Asset.role, Asset.site))]
        return jobs, reasons, assets

    def _broker_families(self, family: Any) -> Iterator[Any]:
        up = family("synthpipe_broker_up")
        try:
            lengths = self.queue_lengths()
        except Exception as exc:
            log.warning("metrics: cannot read the broker's queues: %s", exc)
            self._close_broker()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fam = family("synthpipe_queue_length")
        for queue, n in lengths.items():
            fam.add_metric([queue], n)
        yield fam

    def queue_lengths(self) -> dict[str, int]:
        """Messages waiting in each registered stage's queue (Redis: LLEN over its priority lists)."""
        from common import stages

        if self._broker is None:
            from common.celery_app import get_app

            self._broker = get_app(self.settings).connection_for_read()
        channel = self._broker.default_channel
        client = channel.client
        out = {}
        for stage in stages.all_stages():
            keys = {channel._q_for_pri(stage.queue, pri) for pri in channel.priority_steps}
            out[stage.queue] = int(sum(client.llen(k) for k in keys))
        return out

    def _close_broker(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):  # already gone
                self._broker.release()
            self._broker = None


def serve_store(db: Database, settings: Settings, port: int, address: str) -> Any:
    """Serve the store- and broker-side gauges (and nothing else) on ``address:port``."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(db, settings))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
