"""Every metric synthpipe's endpoints serve: name, type, labels and where it is served.

Every name starts with ``synthpipe_``; :data:`SPECS` lists them all (the dashboard test checks
its queries against it). The worker side records them (:mod:`common.observability.metrics`), the
store side reads them from the database at scrape time (:mod:`common.observability.collector`),
the GPU side from NVML (:mod:`common.observability.gpu`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    MetricSpec("synthpipe_model_tokens", "counter", "tokens the model stages' answers cost (kind prompt or "
               "completion), counted when their jobs are recorded: a hosted run's cost", ("stage", "kind"), "worker"),
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
