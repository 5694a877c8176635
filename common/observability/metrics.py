"""Recording what workers did: jobs by status and reason code, batch sizes, batch and
model-call latency, model load time, tokens spent, crawl pages and images per site, live worker processes.

Prefork children each write their own files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus
multiprocess mode, :func:`enable_multiprocess`); the parent serves their sum
(:mod:`common.observability.serving`). Recording is a no-op when ``prometheus_client`` is not
installed (it ships with the ``distributed`` extra), so the local runner never depends on it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.observability.specs import MULTIPROC_ENV, NO_REASON, NO_SITE, SPECS
from common.store.usage import usage_entries

if TYPE_CHECKING:
    from common.store.jobs import Outcome

log = logging.getLogger(__name__)

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
    """Count one recorded job (``status`` as ``common.store.jobs.record`` returned it); returns ``status``."""
    m = _worker_metrics()
    if m is None:
        return status
    try:
        m["jobs_finished"].labels(stage, status or "lost", outcome.reason or NO_REASON).inc()
        result = outcome.result or {}
        if status is not None:  # a lost claim recorded nothing, so it counts no tokens either
            for entry in usage_entries(result):
                m["model_tokens"].labels(stage, "prompt").inc(int(entry.get("prompt_tokens") or 0))
                m["model_tokens"].labels(stage, "completion").inc(int(entry.get("completion_tokens") or 0))
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


def model_loaded(model: str, seconds: float) -> None:
    m = _worker_metrics()
    if m is not None:
        m["model_load_seconds"].labels(model).observe(seconds)


def process_started(stage: str) -> None:
    """This process works for ``stage`` (a live gauge: it leaves the sum when the process dies)."""
    m = _worker_metrics()
    if m is not None:
        m["worker_processes"].labels(stage).set(1)


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
