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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common import jobs as jobstore
from common.assets import Provenance, register_image_bytes
from common.errors import InputError, TransientError
from common.jobs import ClaimedJob, Outcome
from common.pairing import pair_new_assets
from common.runner import StageContext
from common.settings import Settings
from worker_scrape.config import CrawlConfig
from worker_scrape.errors import BrowserError, SiteError
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
    try:
        site_file = load_sites(sites_file)
    except SiteError as exc:
        raise InputError(str(exc)) from None
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
    """One browser per worker process, reused across batches (restarted by the crawler if it dies)."""

    def __init__(self) -> None:
        self.crawler: Any = None
        self.config: CrawlConfig | None = None

    def get(self, config: CrawlConfig) -> Any:
        from worker_scrape.crawler import Crawler

        if self.crawler is None or config != self.config:
            self.close()
            self.crawler, self.config = Crawler(config), config
        return self.crawler

    def close(self) -> None:
        if self.crawler is not None:
            self.crawler.close()
            self.crawler = None


RESIDENT = _ResidentCrawler()
atexit.register(RESIDENT.close)


def crawl_config(settings: Settings) -> CrawlConfig:
    return CrawlConfig.from_settings(settings.scrape)


def process_batch(jobs: list[ClaimedJob], ctx: StageContext) -> list[Outcome]:
    """Crawl each job's site; one outcome per job."""
    return [_crawl_one(job, ctx) for job in jobs]


def _crawl_one(job: ClaimedJob, ctx: StageContext) -> Outcome:
    try:
        site = Site.model_validate(job.payload["site"])
        category = str(job.payload["category"])
    except Exception as exc:
        return Outcome.from_error(InputError(f"scrape job {job.key}: bad payload: {exc}"))
    settings = ctx.settings
    pair_seed = int(hashlib.sha256(job.key.encode()).hexdigest()[:8], 16)
    registered: list[int] = []

    def on_image(candidate: Any) -> str:
        provenance = Provenance(
            source_url=candidate.image_url, page_url=candidate.page_url, site=candidate.site or site.name,
            category=candidate.category or category, licence=candidate.licence, fetched_at=dt.datetime.now(dt.UTC),
        )
        with ctx.db.session() as s:
            reg = register_image_bytes(
                s, candidate.data, role=candidate.role, provenance=provenance, storage=ctx.storage,
                limits=settings.images, phash_threshold=settings.scrape.phash_threshold,
                colour_tolerance=settings.scrape.colour_tolerance,
            )
            if reg.status == "registered" and reg.asset_id is not None:
                registered.append(reg.asset_id)
                if settings.pairing.auto_pair:  # same transaction: an asset is never left unpaired
                    pair_new_assets(s, settings, [reg.asset_id], seed=pair_seed + len(registered))
        return reg.status if reg.status != "rejected" else f"rejected: {reg.reason}"

    try:
        crawler = RESIDENT.get(crawl_config(settings))
        report = crawler.crawl_site(site, category, max_pages=job.payload.get("max_pages"), on_image=on_image)
    except BrowserError as exc:
        RESIDENT.close()
        return Outcome.from_error(TransientError(f"browser: {exc}"))
    summary = report.summary()
    result = {"site": site.name, "category": category, "registered_assets": len(registered), **summary,
              "report": report.model_dump(mode="json")}
    return Outcome.ok(result)
