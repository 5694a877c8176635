"""The scrape stage: queue crawl batches (producer) and run them (``process_batch``).

A crawl batch is one ``scrape`` job naming one sampled site; its payload carries the whole site
entry, so a worker on another machine needs no copy of the site file. Each downloaded image
goes through the safe loader and dedup into the store, in the same transaction as the pairing
it feeds, so crawling alone fills the VL queue and a crash loses neither.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.core.errors import ConfigError, InputError
from common.core.settings import ScrapeSettings, Settings
from common.domain.pairing import pair_new_assets
from common.media.assets import Provenance, register_image_bytes
from common.runtime.runner import StageContext
from common.store import jobs as jobstore
from common.store.jobs import ClaimedJob, Outcome
from common.store.rows import Job
from worker_scrape.sites import Site, load_sites, sample_sites

log = logging.getLogger(__name__)


@dataclass
class CrawlQueueReport:
    queued: int
    existing: int
    seed: int
    batches: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {"queued": self.queued, "existing": self.existing, "seed": self.seed, "batches": self.batches}


def queue_crawl(session: Session, sites_file: Path, *, batches: int, seed: int,
                max_pages: int | None = None) -> CrawlQueueReport:
    """Sample ``batches`` sites (category, then site, by weight) and queue one job each.

    The key holds the file's hash, the seed and the batch number: the same command twice
    queues nothing new.
    """
    site_file = load_sites(sites_file)  # a SiteError is an InputError: exit 2, one line
    digest = hashlib.sha256(sites_file.read_bytes()).hexdigest()[:16]
    report = CrawlQueueReport(0, 0, seed, [])
    for i, (category, site) in enumerate(sample_sites(site_file, batches, seed)):
        payload = {"site": site.model_dump(mode="json"), "category": category.name,
                   "max_pages": max_pages, "sites_file": str(sites_file), "batch": i, "seed": seed}
        new = jobstore.enqueue(session, "scrape", f"scrape:{digest}:{seed}:{i}", payload)
        report.queued += new is not None
        report.existing += new is None
        report.batches.append({"category": category.name, "site": site.name})
    return report


class _ResidentCrawler:
    """One crawler (browsers, robots cache, throttle) per worker process, reused across batches
    and shared by the threads of a ``--pool threads`` worker, so per-host politeness holds across
    them all; with a Redis broker (distributed mode) the slot and the robots.txt cache live in that
    Redis, so it holds across every worker process and machine as well. Thread-safe."""

    def __init__(self) -> None:
        self.crawler: Any = None
        self.config: tuple[ScrapeSettings, str | None, Path | None] | None = None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Any:
        from worker_scrape.crawler import Crawler
        from worker_scrape.throttle import shared_redis

        config = (settings.scrape.model_copy(), settings.broker_url, settings.celery.broker_ca_file)
        with self._lock:
            if self.crawler is None or config != self.config:
                self._close_locked()
                self.crawler = Crawler(config[0].model_copy(), redis=shared_redis(config[1], config[2]),
                                       image_limits=settings.images.model_copy())
                self.config = config
            return self.crawler

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.crawler is not None:
            self.crawler.close()
            self.crawler = None


RESIDENT = _ResidentCrawler()
atexit.register(RESIDENT.close)


def process_batch(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    """Crawl each job's site, ``scrape.concurrency`` sites at a time; one outcome per job.

    A missing browser raises :class:`BrowserMissing` (a settings error): the runner gives every
    job of the batch back, uncharged.
    """
    from worker_scrape.browser import check_browser_paths
    from worker_scrape.crawlstate import CrawlState

    settings = ctx.settings
    check_browser_paths(settings.scrape)
    outcomes: list[Outcome | None] = [None] * len(jobs)
    runs: list[_JobRun] = []
    for i, job in enumerate(jobs):
        try:
            site = Site.model_validate(job.payload["site"])
            category = str(job.payload["category"])
        except Exception as exc:
            outcomes[i] = Outcome.from_error(InputError(f"scrape job {job.key}: bad payload: {exc}",
                                                        code="scrape.bad_payload"))
            continue
        runs.append(_JobRun(i, job, site, category, ctx, _load_checkpoint(ctx, job, CrawlState)))
    if runs:
        from worker_scrape.crawler import CrawlItem

        crawler = RESIDENT.get(settings)
        items = [CrawlItem(r.site, r.category, _OnImage(r, ctx), r.job.payload.get("max_pages"), r.state,
                           r.checkpoint) for r in runs]
        for run, result in zip(runs, crawler.crawl_batch(items), strict=True):
            outcomes[run.index] = run.outcome(result)
    return [o for o in outcomes if o is not None]


class _JobRun:
    """One scrape job of a batch: its site, its checkpoint and its registered assets."""

    def __init__(self, index: int, job: ClaimedJob, site: Site, category: str, ctx: StageContext,
                 state: Any) -> None:
        self.index, self.job, self.site, self.category, self.ctx, self.state = index, job, site, category, ctx, state
        self.registered: list[int] = []
        self.pair_seed = int(hashlib.sha256(job.key.encode()).hexdigest()[:8], 16)

    def checkpoint(self, state: Any) -> None:
        """Store the crawl's state on the job row, fenced on the claim's attempt."""
        with self.ctx.db.session() as s:
            s.execute(update(Job).where(Job.id == self.job.id, Job.status == "running",
                                        Job.attempts == self.job.attempts)
                      .values(result={CHECKPOINT_KEY: state.model_dump(mode="json")}))

    def outcome(self, result: Any) -> Outcome:
        if isinstance(result, ConfigError):
            raise result
        if isinstance(result, BaseException):  # a BrowserError's browser is already dropped
            return Outcome.from_error(result)
        summary = result.summary()
        return Outcome.ok({"site": self.site.name, "category": self.category,
                           "registered_assets": len(self.registered), **summary,
                           "report": result.model_dump(mode="json")})


CHECKPOINT_KEY = "crawl_checkpoint"


def _load_checkpoint(ctx: StageContext, job: ClaimedJob, state_cls: Any) -> Any:
    with ctx.db.session() as s:
        result = s.scalar(select(Job.result).where(Job.id == job.id))
    if not isinstance(result, dict) or CHECKPOINT_KEY not in result:
        return None
    try:
        return state_cls.model_validate(result[CHECKPOINT_KEY])
    except Exception:
        log.warning("scrape job %s: unreadable checkpoint, crawling from the start", job.key)
        return None


class _OnImage:
    """Registers a downloaded image (safe loader, dedup, store) and pairs it, in one transaction."""

    def __init__(self, run: _JobRun, ctx: StageContext) -> None:
        self.run, self.ctx = run, ctx

    def __call__(self, candidate: Any) -> Any:
        from worker_scrape.crawler import ImageOutcome

        run = self.run
        settings = self.ctx.settings
        provenance = Provenance(
            source_url=candidate.image_url, page_url=candidate.page_url, site=candidate.site,
            category=candidate.category, licence=candidate.licence, fetched_at=dt.datetime.now(dt.UTC),
            found_via=candidate.found_via, role_evidence=candidate.role_evidence or None,
            versions=candidate.versions,
        )
        with self.ctx.db.session() as s:
            reg = register_image_bytes(
                s, candidate.data, role=candidate.role, provenance=provenance, storage=self.ctx.storage,
                limits=settings.images, phash_threshold=settings.scrape.phash_threshold,
                colour_tolerance=settings.scrape.colour_tolerance, prefer_larger=True,
            )
            if reg.status == "registered" and reg.asset_id is not None:
                run.registered.append(reg.asset_id)
                if settings.pairing.auto_pair:  # same transaction: an asset is never left unpaired
                    pair_new_assets(s, settings, [reg.asset_id], seed=run.pair_seed + len(run.registered))
        return ImageOutcome(reg.status, reg.code, reg.reason or "")
