"""The crawler: breadth-first over a site's pages in one reused headless browser, images
downloaded with the fetcher and handed to a callback that registers them."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from pydantic import BaseModel, Field

from worker_scrape.browser import Browser, PageError
from worker_scrape.config import CrawlConfig
from worker_scrape.errors import FetchError, RedirectBlockedByRobots
from worker_scrape.errors import OffSiteRedirect as OffSiteRedirectError
from worker_scrape.extract import page_image_urls
from worker_scrape.fetcher import Fetcher
from worker_scrape.robots import RobotsCache
from worker_scrape.sites import Category, Site
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import (
    TrapGuard,
    host_key,
    is_same_site,
    normalize_url,
    path_allowed,
    site_hosts,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageCandidate:
    """One downloaded image, as handed to ``on_image``."""

    image_url: str
    page_url: str
    role: str
    data: bytes = field(repr=False)
    site: str = ""
    category: str = ""
    licence: str | None = None
    content_type: str = ""
    final_url: str = ""  # after same-site redirects


OnImage = Callable[[ImageCandidate], str]


class PageFailure(BaseModel):
    url: str
    reason: str


class ImageFailure(BaseModel):
    url: str
    page_url: str
    reason: str


class OffSiteRedirect(BaseModel):
    url: str
    to: str
    kind: str  # "page" or "image"


class ImageRecord(BaseModel):
    url: str
    page_url: str
    role: str
    status: str


class CrawlReport(BaseModel):
    """JSON-serialisable summary of one ``crawl_site`` call (``report.model_dump(mode="json")``)."""

    site: str
    category: str
    start_urls: list[str]
    pages_visited: list[str] = Field(default_factory=list)
    pages_failed: list[PageFailure] = Field(default_factory=list)
    images_found: int = 0
    images_downloaded: int = 0
    images_failed: list[ImageFailure] = Field(default_factory=list)
    images_skipped_no_role: int = 0
    images_by_status: dict[str, int] = Field(default_factory=dict)  # "registered", "rejected", ...
    rejections: dict[str, int] = Field(default_factory=dict)  # "rejected: <reason>" -> n
    images: list[ImageRecord] = Field(default_factory=list)
    robots_blocked: list[str] = Field(default_factory=list)
    off_site_redirects: list[OffSiteRedirect] = Field(default_factory=list)
    links_skipped: dict[str, int] = Field(default_factory=dict)  # reason -> n
    browser_restarts: int = 0
    stopped: str = ""  # "done", "max_pages", "max_seconds"
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts only (for logs and job rows)."""
        return {
            "site": self.site,
            "category": self.category,
            "pages_visited": len(self.pages_visited),
            "pages_failed": len(self.pages_failed),
            "images_found": self.images_found,
            "images_downloaded": self.images_downloaded,
            "images_failed": len(self.images_failed),
            "images_by_status": self.images_by_status,
            "robots_blocked": len(self.robots_blocked),
            "off_site_redirects": len(self.off_site_redirects),
            "browser_restarts": self.browser_restarts,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


class Crawler:
    """Crawls sites with one headless browser reused across a batch (restarted if it dies),
    one robots.txt cache and one per-host politeness throttle.

    Use as a context manager, or call :meth:`close`. Not thread-safe: one crawl at a time.
    """

    def __init__(
        self,
        config: CrawlConfig | None = None,
        *,
        throttle: HostThrottle | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config or CrawlConfig()
        self.throttle = throttle or HostThrottle()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = self.config.user_agent
        self.robots = RobotsCache(
            self.config.user_agent,
            session=self.session,
            throttle=self.throttle,
            timeout_s=min(15.0, self.config.download_timeout_s),
            on_unreachable=self.config.robots_on_unreachable,
        )
        self.fetcher = Fetcher(self.config, self.throttle, self.robots, self.session)
        self.browser = Browser(self.config)

    def close(self) -> None:
        self.browser.close()
        self.session.close()

    def __enter__(self) -> Crawler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def crawl_batch(
        self,
        items: Iterable[tuple[Category, Site]],
        *,
        on_image: OnImage,
        max_pages: int | None = None,
    ) -> list[CrawlReport]:
        """Crawl several (category, site) pairs, e.g. from ``sample_sites``, in one browser."""
        return [
            self.crawl_site(site, cat, max_pages=max_pages, on_image=on_image)
            for cat, site in items
        ]

    def crawl_site(
        self,
        site: Site,
        category: Category | str,
        *,
        max_pages: int | None = None,
        on_image: OnImage,
    ) -> CrawlReport:
        """Crawl one site breadth-first from its start URLs.

        ``max_pages`` overrides the site's own limit. For every image found (once per URL)
        the bytes are downloaded and ``on_image`` is called; its return value is recorded
        as the image's status. Exceptions from ``on_image`` propagate.
        """
        return _SiteCrawl(self, site, category, max_pages, on_image).run()

    def _delay(self, url: str, site: Site) -> float:
        robots_delay = self.robots.crawl_delay(url, site.delay_s) or 0.0
        return max(site.delay_s, robots_delay)


class _SiteCrawl:
    """State of one ``crawl_site`` call."""

    def __init__(
        self,
        crawler: Crawler,
        site: Site,
        category: Category | str,
        max_pages: int | None,
        on_image: OnImage,
    ) -> None:
        self.c = crawler
        self.site = site
        self.category = category if isinstance(category, str) else category.name
        self.max_pages = max_pages if max_pages is not None else site.max_pages
        self.on_image = on_image
        self.hosts = site_hosts(site.start_urls)
        self.redirect_hosts = self.hosts | {f"www.{h}" for h in self.hosts}
        self.traps = TrapGuard(crawler.config.trap_limits)
        self.report = CrawlReport(
            site=site.name, category=self.category, start_urls=list(site.start_urls)
        )
        self.seen_pages: set[str] = set()
        self.seen_images: set[str] = set()
        self.page_loads = 0  # browser navigations (visited, failed or redirected away)
        self.frontier: deque[tuple[str, int]] = deque()
        self.skipped: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()

    def run(self) -> CrawlReport:
        t0 = time.monotonic()
        restarts0 = self.c.browser.restarts
        limit_s = self.c.config.max_crawl_seconds
        for url in self.site.start_urls:
            norm = normalize_url(url)
            if norm and norm not in self.seen_pages:
                self.seen_pages.add(norm)
                self.frontier.append((norm, 0))
        self.report.stopped = "done"
        try:
            while self.frontier:
                if self.page_loads >= self.max_pages:
                    self.report.stopped = "max_pages"
                    break
                if limit_s is not None and time.monotonic() - t0 > limit_s:
                    self.report.stopped = "max_seconds"
                    break
                url, depth = self.frontier.popleft()
                self._visit(url, depth)
        finally:
            r = self.report
            r.links_skipped = dict(self.skipped)
            r.images_by_status = dict(self.statuses)
            r.rejections = dict(self.rejections)
            r.browser_restarts = self.c.browser.restarts - restarts0
            r.seconds = time.monotonic() - t0
        log.info("crawl %s/%s: %s", self.category, self.site.name, self.report.summary())
        return self.report

    def _allowed_by_robots(self, url: str, page_url: str | None = None) -> bool:
        """True if robots.txt lets us fetch ``url``. A host that never answered is recorded as a
        failure of the page (or, with ``page_url``, of the image) with the reason, not as blocked."""
        if self.c.robots.allowed(url, self.site.delay_s):
            return True
        unreachable = self.c.robots.unreachable_reason(url)
        if unreachable is None:
            self.report.robots_blocked.append(url)
            log.debug("robots.txt disallows %s", url)
        elif page_url is None:
            self.report.pages_failed.append(PageFailure(url=url, reason=f"host {unreachable}"))
        else:
            self.report.images_failed.append(ImageFailure(url=url, page_url=page_url, reason=f"host {unreachable}"))
        return False

    def _visit(self, url: str, depth: int) -> None:
        if not self._allowed_by_robots(url):
            return
        delay = self.c._delay(url, self.site)
        host = host_key(url)
        self.page_loads += 1
        if not self.c.config.reuse_browser:
            self.c.browser.close()
        try:
            page = self.c.browser.render(url, lambda: self.c.throttle.slot(host, delay))
        except PageError as exc:
            self.report.pages_failed.append(PageFailure(url=url, reason=exc.reason))
            return
        final = normalize_url(page.url) or url
        if final != url:
            if not is_same_site(final, self.hosts):
                self.report.off_site_redirects.append(
                    OffSiteRedirect(url=url, to=final, kind="page")
                )
                return
            if not self._allowed_by_robots(final):
                return
            self.seen_pages.add(final)
        if page.status is not None and page.status >= 400:
            self.report.pages_failed.append(PageFailure(url=url, reason=f"HTTP {page.status}"))
            return
        self.report.pages_visited.append(final)
        meta = page.meta_robots
        if "nofollow" not in meta and "none" not in meta and depth < self.site.max_depth:
            self._enqueue_links(page.links, page.base, depth + 1)
        if "noimageindex" not in meta:
            self._take_images(page_image_urls(page.imgs, page.singles, page.base), final)

    def _enqueue_links(self, links: list[str], base: str, depth: int) -> None:
        for link in links:
            url = normalize_url(link, base)
            if url is None:
                self.skipped["not http"] += 1
                continue
            if url in self.seen_pages:
                continue
            reason = None
            if not is_same_site(url, self.hosts):
                reason = "off-site"
            elif not path_allowed(url, self.site.allow_re, self.site.deny_re):
                reason = "allow/deny"
            else:
                reason = self.traps.check(url)
            self.seen_pages.add(url)
            if reason:
                self.skipped[reason] += 1
                continue
            self.frontier.append((url, depth))

    def _take_images(self, urls: list[str], page_url: str) -> None:
        limit = self.c.config.max_images_per_page
        for url in urls[:limit] if limit else urls:
            if url in self.seen_images:
                continue
            self.seen_images.add(url)
            self.report.images_found += 1
            role = self.site.role_for(url, page_url)
            if role is None:
                self.report.images_skipped_no_role += 1
                continue
            if not self._allowed_by_robots(url, page_url):
                continue
            self._download(url, page_url, role)

    def _download(self, url: str, page_url: str, role: str) -> None:
        try:
            got = self.c.fetcher.fetch_image(
                url,
                delay_s=self.c._delay(url, self.site),
                allowed_hosts=self.redirect_hosts,
                referer=page_url,
            )
        except FetchError as exc:
            self.report.images_failed.append(
                ImageFailure(url=url, page_url=page_url, reason=exc.reason)
            )
            if isinstance(exc, OffSiteRedirectError):
                self.report.off_site_redirects.append(
                    OffSiteRedirect(url=url, to=exc.target, kind="image")
                )
            elif isinstance(exc, RedirectBlockedByRobots):
                self.report.robots_blocked.append(exc.target)
            return
        self.report.images_downloaded += 1
        status = self.on_image(
            ImageCandidate(
                image_url=url,
                page_url=page_url,
                role=role,
                data=got.data,
                site=self.site.name,
                category=self.category,
                licence=self.site.licence,
                content_type=got.content_type,
                final_url=got.final_url,
            )
        )
        key = status.split(":", 1)[0].strip() or status
        self.statuses[key] += 1
        if key != status:
            self.rejections[status] += 1
        self.report.images.append(ImageRecord(url=url, page_url=page_url, role=role, status=status))
