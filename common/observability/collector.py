"""The store's gauges for ``synthpipe metrics``: jobs per stage and status, failures by reason
code and assets per role and site, read from the database at scrape time (the store is the
truth), and, when a broker is configured, the length of each stage's queue (read by an object
the caller passes in: :class:`common.queue.broker.BrokerQueues` in distributed mode)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select

from common.observability.specs import NO_SITE, SPEC_BY_NAME
from common.store import jobs as jobstore
from common.store.rows import Asset, Job

if TYPE_CHECKING:
    from common.core.settings import Settings
    from common.store.db import Database

log = logging.getLogger(__name__)


class QueueLengths(Protocol):
    """Reads the broker: messages waiting per queue; ``close`` drops a broken connection."""

    def lengths(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class StoreCollector:
    """Gauges read from the database (and the broker's queues) each time they are scraped."""

    def __init__(self, db: Database, settings: Settings, queues: QueueLengths | None = None) -> None:
        self.db, self.settings, self.queues = db, settings, queues
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
        if self.queues is not None:
            yield from self._broker_families(family)

    def _read_store(self) -> tuple[dict[str, dict[str, int]], list[tuple[list[str], int]], list[tuple[list[str], int]]]:
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
        queues = self.queues
        assert queues is not None
        try:
            lengths = queues.lengths()
        except Exception as exc:
            log.warning("metrics: cannot read the broker's queues: %s", exc)
            queues.close()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        fam = family("synthpipe_queue_length")
        for queue, n in lengths.items():
            fam.add_metric([queue], n)
        yield fam

def serve_store(db: Database, settings: Settings, port: int, address: str,
                queues: QueueLengths | None = None) -> Any:
    """Serve the store-side gauges (and the broker's, when ``queues`` reads them) on ``address:port``."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(db, settings, queues))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
