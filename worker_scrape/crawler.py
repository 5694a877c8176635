"""The crawler: breadth-first over each site's pages (seeded from its start URLs and sitemaps) in
headless Chromium, images downloaded with the fetcher and handed to a callback that registers them.

Several sites run at once (``scrape.concurrency``, one browser each); one :class:`HostThrottle`,
one robots.txt cache and one bounded download pool serve them all, so per-host politeness holds
whatever the concurrency: one request in flight per host, ``max(delay_s, Crawl-delay)`` apart.
Given a Redis client (distributed mode: the broker's), the slot and the robots.txt cache live in
Redis, so politeness holds across every worker process and machine too.
Only the site's hosts (its start URLs' and the site file's ``hosts``) are ever requested: an image
elsewhere (a tracking pixel, an ad network) is counted as ``image.offsite`` and skipped. Every HTTP
request outside the browser goes through the bounded reader (:mod:`worker_scrape.reader`).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import requests
from PIL import Image

from common.core.settings import ImageSettings, ScrapeSettings
from worker_scrape.browser import Browser
from worker_scrape.crawlstate import (
    CrawlReport,
    CrawlState,
    ImageFailure,
    ImageRecord,
    OffSiteRedirect,
    PageFailure,
)
from worker_scrape.errors import (
    BrowserError,
    FetchError,
    HostUnreachable,
    PageError,
    RedirectBlockedByRobots,
)
from worker_scrape.errors import OffSiteRedirect as OffSiteRedirectError
from worker_scrape.extract import (
    BANNER,
    SMALLER_VERSION,
    group_versions,
    page_candidates,
)
from worker_scrape.fetcher import Fetcher
from worker_scrape.reader import mount_bounded
from worker_scrape.robots import RobotsCache, SharedRobots
from worker_scrape.roles import RoleDecision, RoleDetector, rule_role
from worker_scrape.sitemaps import default_sitemap, read_sitemaps
from worker_scrape.sites import Category, Site
from worker_scrape.throttle import HostThrottle, RedisHostThrottle
from worker_scrape.urls import (
    TrapGuard,
    TrapLimits,
    host_key,
    is_same_site,
    normalize_url,
    path_allowed,
    site_hosts,
)

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

MAX_FRONTIER_PER_PAGE = 20  # frontier bound: max_pages x this many URLs waiting
IMAGE_OFFSITE = "image.offsite"  # an image on a host that is not the site's: counted, never requested


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
    found_via: str = "link"  # how the page (or, for image sitemaps, the image) was found
    role_evidence: dict[str, Any] = field(default_factory=dict)  # how the role was decided
    versions: tuple[dict[str, Any], ...] = ()  # the photo's renditions found with it (url, width, source)


class ImageOutcome(NamedTuple):
    """What ``on_image`` made of an image: a status (``registered``, ``replaced``, ``duplicate``,
    ``near_duplicate``, ``rejected``) and, for a refusal, its reason code and message."""

    status: str
    code: str | None = None
    message: str = ""


OnImage = Callable[[ImageCandidate], ImageOutcome]
OnCheckpoint = Callable[[CrawlState], None]


@dataclass
class CrawlItem:
    """One site to crawl in a batch, with its own image callback, page limit and checkpoint."""

    site: Site
    category: Category | str
    on_image: OnImage
    max_pages: int | None = None
    state: CrawlState | None = None  # resume from this checkpoint
    on_checkpoint: OnCheckpoint | None = None


class Crawler:
    """Crawls sites with a pool of headless browsers (restarted if they die), one robots.txt cache,
    one per-host politeness throttle and one bounded image-download pool.

    Use as a context manager, or call :meth:`close`. :meth:`crawl_batch` is the concurrent entry;
    ``on_image`` calls are serialised (one registration at a time). With ``redis`` (distributed
    mode; see :func:`~worker_scrape.throttle.shared_redis`) the per-host slot and the robots.txt
    cache are shared through it with every other worker; the crawler closes the client.
    """

    def __init__(self, config: ScrapeSettings, *, throttle: HostThrottle | None = None,
                 session: requests.Session | None = None, trap_limits: TrapLimits | None = None,
                 reuse_browser: bool = True, redis: Redis | None = None, image_limits: ImageSettings | None = None,
                 **browser_options: Any) -> None:
        self.config = config
        self.redis = redis
        self.throttle = throttle or (RedisHostThrottle(redis) if redis is not None else HostThrottle())
        self.session = session or requests.Session()
        mount_bounded(self.session, config.concurrency + config.download_workers + 2)  # the deadline can cut it
        self.session.headers["User-Agent"] = config.user_agent
        self.trap_limits = trap_limits or TrapLimits()
        self.reuse_browser = reuse_browser
        self.robots = RobotsCache(config.user_agent, session=self.session, throttle=self.throttle,
                                  timeout_s=min(15.0, config.download_timeout_s), deadline_s=config.fetch_deadline_s,
                                  on_unreachable=config.robots_on_unreachable,
                                  shared=SharedRobots(redis) if redis is not None else None)
        self.fetcher = Fetcher(config, self.throttle, self.robots, self.session)
        self.roles = RoleDetector(image_limits or ImageSettings())
        self._browser_options = browser_options
        self._idle_browsers: list[Browser] = []
        self._all_browsers: list[Browser] = []
        self._browsers_lock = threading.Lock()
        self._downloads = ThreadPoolExecutor(config.download_workers, thread_name_prefix="download")
        self._register_lock = threading.Lock()

    # --- resources ----------------------------------------------------------------------------
    @property
    def browser(self) -> Browser:
        """The first browser (made on first use); one-site-at-a-time callers and tests use it."""
        with self._browsers_lock:
            if not self._all_browsers:
                self._new_browser_locked()
            return self._all_browsers[0]

    def _new_browser_locked(self) -> Browser:
        b = Browser(self.config, **self._browser_options)
        self._all_browsers.append(b)
        self._idle_browsers.append(b)
        return b

    def _take_browser(self) -> Browser:
        with self._browsers_lock:
            if not self._idle_browsers:
                self._new_browser_locked()
            return self._idle_browsers.pop(0)

    def _give_browser(self, browser: Browser) -> None:
        with self._browsers_lock:
            self._idle_browsers.insert(0, browser)

    def _drop_browser(self, browser: Browser) -> None:
        browser.close()
        with self._browsers_lock:
            if browser in self._all_browsers:
                self._all_browsers.remove(browser)

    def close(self) -> None:
        self._downloads.shutdown(wait=True, cancel_futures=True)
        for b in self._all_browsers:
            b.close()
        self.session.close()
        self.throttle.close()
        if self.redis is not None:
            self.redis.close()

    def __enter__(self) -> Crawler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- crawling -----------------------------------------------------------------------------
    def crawl_batch(self, items: Iterable[tuple[Category | str, Site] | CrawlItem], *, on_image: OnImage | None = None,
                    max_pages: int | None = None) -> list[CrawlReport | BaseException]:
        """Crawl several sites, ``scrape.concurrency`` at a time: (category, site) pairs sharing
        ``on_image`` and ``max_pages``, or :class:`CrawlItem` s with their own. Returns one report per
        item, or the exception that ended that item's crawl (the others go on)."""
        jobs: list[CrawlItem] = []
        for item in items:
            if isinstance(item, CrawlItem):
                jobs.append(item)
            else:
                assert on_image is not None, "on_image is needed for (category, site) pairs"
                jobs.append(CrawlItem(item[1], item[0], on_image, max_pages))

        def one(item: CrawlItem) -> CrawlReport | BaseException:
            try:
                return self.crawl_site(item.site, item.category, max_pages=item.max_pages, on_image=item.on_image,
                                       state=item.state, on_checkpoint=item.on_checkpoint)
            except Exception as exc:
                return exc

        if len(jobs) <= 1 or self.config.concurrency == 1:
            return [one(item) for item in jobs]
        with ThreadPoolExecutor(min(self.config.concurrency, len(jobs)), thread_name_prefix="site") as pool:
            return list(pool.map(one, jobs))

    def crawl_site(self, site: Site, category: Category | str, *, max_pages: int | None = None,
                   on_image: OnImage, state: CrawlState | None = None,
                   on_checkpoint: OnCheckpoint | None = None) -> CrawlReport:
        """Crawl one site breadth-first from its start URLs and sitemaps (or from ``state``, a
        checkpoint of an earlier, interrupted crawl of it).

        ``max_pages`` overrides the site's own limit. For every image found (once per URL) the bytes
        are downloaded and ``on_image`` is called; its outcome is recorded. Exceptions from
        ``on_image`` propagate. ``on_checkpoint`` gets the state after every page.
        """
        browser = self._take_browser()
        try:
            report = _SiteCrawl(self, browser, site, category, max_pages, on_image, state, on_checkpoint).run()
        except BrowserError:  # it kept dying: drop it; the next crawl starts a fresh one
            self._drop_browser(browser)
            raise
        except BaseException:
            self._give_browser(browser)
            raise
        self._give_browser(browser)
        return report

    def delay_for(self, url: str, site: Site) -> float:
        """The politeness delay for ``url``: the larger of the site's and robots.txt's Crawl-delay."""
        robots_delay = self.robots.crawl_delay(url, site.delay_s) or 0.0
        return max(site.delay_s, robots_delay)

    def register(self, on_image: OnImage, candidate: ImageCandidate) -> ImageOutcome:
        with self._register_lock:
            out = on_image(candidate)
        return out if isinstance(out, ImageOutcome) else ImageOutcome(str(out))


class _SiteCrawl:
    """State of one ``crawl_site`` call."""

    def __init__(self, crawler: Crawler, browser: Browser, site: Site, category: Category | str,
                 max_pages: int | None, on_image: OnImage, state: CrawlState | None,
                 on_checkpoint: OnCheckpoint | None) -> None:
        self.c = crawler
        self.browser = browser
        self.site = site
        self.category = category if isinstance(category, str) else category.name
        self.max_pages = max_pages if max_pages is not None else site.max_pages
        self.on_image = on_image
        self.on_checkpoint = on_checkpoint
        self.hosts = site_hosts(site.start_urls)
        self.extra_hosts = frozenset(site.hosts)
        self.browser_hosts = self.hosts | site_hosts(f"http://{h}/" for h in site.hosts)
        self.redirect_hosts = self.hosts | {f"www.{h}" for h in self.hosts} | self.extra_hosts
        self.traps = TrapGuard(crawler.trap_limits)
        self.resumed = state is not None
        self.state = state or CrawlState(
            report=CrawlReport(site=site.name, category=self.category, start_urls=list(site.start_urls)))
        self.report = self.state.report
        self.seen_pages = set(self.state.seen_pages)
        self.seen_images = set(self.state.seen_images)
        self.frontier: deque[tuple[str, int, str]] = deque(tuple(f) for f in self.state.frontier)  # type: ignore[misc]
        self.skipped: Counter[str] = Counter(self.report.links_skipped)
        self.statuses: Counter[str] = Counter(self.report.images_by_status)
        self.rejections: Counter[str] = Counter(self.report.rejections)
        self.via: Counter[str] = Counter(self.report.pages_found_via)
        self.blocked_images: Counter[str] = Counter(self.report.images_blocked)
        self.skipped_images: Counter[str] = Counter(self.report.images_skipped)
        self.roles_by: Counter[str] = Counter(self.report.roles_by)

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> CrawlReport:
        t0 = time.monotonic()
        seconds0 = self.report.seconds
        restarts0 = self.browser.restarts
        limit_s = self.c.config.max_crawl_seconds
        if self.resumed:
            self.report.resumed += 1
            log.info("crawl %s: resuming with %d page(s) waiting", self.site.name, len(self.frontier))
        else:
            for url in self.site.start_urls:
                self._add_page(normalize_url(url), 0, "start")
        self.report.stopped = "done"
        try:
            if not self.state.pending_images and not self.state.sitemaps_read:
                if self.c.config.sitemaps:
                    self._seed_from_sitemaps()
                self.state.sitemaps_read = True
                self._checkpoint()
            self._finish_pending()
            while self.frontier:
                if self.state.page_loads >= self.max_pages:
                    self.report.stopped = "max_pages"
                    break
                if limit_s is not None and time.monotonic() - t0 > limit_s:
                    self.report.stopped = "max_seconds"
                    break
                url, depth, via = self.frontier.popleft()
                self._visit(url, depth, via)
                self._finish_pending()
        finally:
            self._sync_report()
            self.report.browser_restarts += self.browser.restarts - restarts0
            self.report.seconds = seconds0 + time.monotonic() - t0
        log.info("crawl %s/%s: %s", self.category, self.site.name, self.report.summary())
        return self.report

    def _sync_report(self) -> None:
        r = self.report
        r.links_skipped = dict(self.skipped)
        r.images_by_status = dict(self.statuses)
        r.rejections = dict(self.rejections)
        r.pages_found_via = dict(self.via)
        r.images_blocked = dict(self.blocked_images)
        r.images_skipped = dict(self.skipped_images)
        r.roles_by = dict(self.roles_by)

    def _checkpoint(self) -> None:
        if self.on_checkpoint is None:
            return
        self._sync_report()
        st = self.state
        st.frontier = [list(f) for f in self.frontier]
        st.seen_pages = sorted(self.seen_pages)
        st.seen_images = sorted(self.seen_images)
        self.on_checkpoint(st)

    def _add_page(self, url: str | None, depth: int, via: str) -> bool:
        if url is None or url in self.seen_pages:
            return False
        self.seen_pages.add(url)
        if len(self.frontier) >= self.max_pages * MAX_FRONTIER_PER_PAGE:
            self.skipped["frontier.full"] += 1
            return False
        self.frontier.append((url, depth, via))
        return True

    # --- sitemaps -------------------------------------------------------------------------------
    def _seed_from_sitemaps(self) -> None:
        cfg = self.c.config
        roots: list[str] = []
        for start in self.site.start_urls:
            if self.c.robots.entry(start, self.site.delay_s).status == "unreachable":
                continue
            listed = self.c.robots.sitemaps(start, self.site.delay_s)
            roots.extend(listed or [default_sitemap(start)])

        def allowed(url: str) -> bool:
            return (is_same_site(url, self.browser_hosts) or host_key(url) in self.extra_hosts) and \
                self.c.robots.allowed(url, self.site.delay_s)

        result = read_sitemaps(list(dict.fromkeys(roots)), session=self.c.session, throttle=self.c.throttle,
                               delay_for=lambda u: self.c.delay_for(u, self.site), allowed=allowed,
                               max_files=cfg.sitemap_max_files, max_bytes=cfg.sitemap_max_bytes,
                               max_urls=cfg.sitemap_max_urls, timeout_s=cfg.download_timeout_s,
                               deadline_s=cfg.fetch_deadline_s)
        sm = self.report.sitemap
        sm.files_read = result.files_read
        sm.failures = result.failures
        sm.truncated = result.truncated
        for entry in result.entries:
            url = entry.page_url
            reason = self._link_rule(url)
            if reason is None and not self.c.robots.allowed(url, self.site.delay_s):
                reason = "robots"
            if reason:
                sm.entries_skipped[reason] = sm.entries_skipped.get(reason, 0) + 1
                continue
            sm.pages += self._add_page(url, 0, "sitemap")
            if entry.images:
                self.state.sitemap_images.setdefault(url, []).extend(entry.images)
                sm.images += len(entry.images)

    # --- pages ----------------------------------------------------------------------------------
    def _allowed_by_robots(self, url: str, page_url: str | None = None) -> bool:
        """True if robots.txt lets us fetch ``url``. A host that never answered is recorded as a
        failure of the page (or, with ``page_url``, of the image) with its code, not as blocked."""
        if self.c.robots.allowed(url, self.site.delay_s):
            return True
        unreachable = self.c.robots.unreachable_reason(url)
        if unreachable is None:
            self.report.robots_blocked.append(url)
        elif page_url is None:
            self.report.pages_failed.append(PageFailure(url=url, code=HostUnreachable.default_code, message=f"host unreachable: {unreachable}"))
        else:
            self.report.images_failed.append(ImageFailure(url=url, page_url=page_url, code=HostUnreachable.default_code,
                                                          message=f"host unreachable: {unreachable}"))
        return False

    def _browser_may_request(self, url: str) -> bool:
        return is_same_site(url, self.browser_hosts)

    def _visit(self, url: str, depth: int, via: str) -> None:
        if not self._allowed_by_robots(url):
            return
        delay = self.c.delay_for(url, self.site)
        host = host_key(url)
        self.state.page_loads += 1
        if not self.c.reuse_browser:
            self.browser.close()
        try:
            page = self.browser.render(url, lambda: self.c.throttle.slot(host, delay), self._browser_may_request,
                                       interact=self.site.interact)
        except PageError as exc:
            self.report.pages_failed.append(PageFailure(url=url, code=exc.code, message=str(exc)))
            return
        self._count_blocked(url, page.blocked)
        documents = [b for b in page.blocked if b.resource_type == "Document"]
        final = normalize_url(page.url)
        if final is None and documents:  # a redirect or a script sent the tab off the site: stopped
            self.report.off_site_redirects.append(OffSiteRedirect(url=url, to=documents[0].url, kind="page"))
            return
        final = final or url
        if final != url:
            if not is_same_site(final, self.hosts):
                self.report.off_site_redirects.append(OffSiteRedirect(url=url, to=final, kind="page"))
                return
            if not self._allowed_by_robots(final):
                return
            self.seen_pages.add(final)
        if page.status is not None and page.status >= 400:
            self.report.pages_failed.append(PageFailure(url=url, code="page.http_status", message=f"HTTP {page.status}"))
            return
        self.report.pages_visited.append(final)
        self.via[via] += 1
        meta = page.meta_robots
        if "nofollow" not in meta and "none" not in meta and depth < self.site.max_depth:
            self._enqueue_links(page.links, page.base, depth + 1)
        groups: list[dict[str, Any]] = []
        if "noimageindex" not in meta:
            cfg = self.c.config
            cands = page_candidates(page.image_data(), page.base,
                                    keep_state_url=lambda u: is_same_site(u, self.browser_hosts))
            found = group_versions(cands, max_aspect=cfg.banner_aspect, min_rendered=cfg.min_rendered_side,
                                   max_state_photos=cfg.max_state_photos, skip_furniture=cfg.skip_page_furniture)
            limit = cfg.max_images_per_page
            groups = [g.as_state() for g in (found[:limit] if limit else found)]
        groups += [{"urls": [u], "vias": ["sitemap"]} for u in self.state.sitemap_images.pop(url, [])]
        self.state.pending_images = [[g, final, "image_sitemap" if g["vias"] == ["sitemap"] else via]
                                     for g in groups]
        self._checkpoint()  # the page is done from here: a resumed crawl never loads it again

    def _count_blocked(self, page_url: str, blocked: list[Any]) -> None:
        r = self.report
        for b in blocked:
            r.blocked_requests += 1
            r.blocked_by_type[b.resource_type] = r.blocked_by_type.get(b.resource_type, 0) + 1
            if len(r.blocked_samples) < 50:
                r.blocked_samples.append({"url": b.url, "page_url": page_url, "type": b.resource_type})

    def _link_rule(self, url: str) -> str | None:
        """Why a page URL (a link or a sitemap entry) is not crawled, or None: off-site, then the
        trap bounds (which cap what the site's rules are matched on), then the allow/deny rules."""
        if not is_same_site(url, self.hosts):
            return "off-site"
        trap = self.traps.check(url)
        if trap:
            return trap
        if not path_allowed(url, self.site.allow_re, self.site.deny_re):
            return "allow/deny"
        return None

    def _enqueue_links(self, links: list[str], base: str, depth: int) -> None:
        for link in links:
            url = normalize_url(link, base)
            if url is None:
                self.skipped["not http"] += 1
                continue
            if url in self.seen_pages:
                continue
            reason = self._link_rule(url)
            if reason:
                self.seen_pages.add(url)
                self.skipped[reason] += 1
                continue
            self._add_page(url, depth, "link")

    # --- images ---------------------------------------------------------------------------------
    def _finish_pending(self) -> None:
        """Download and register the current page's images (in the download pool), then checkpoint."""
        if not self.state.pending_images:
            return
        todo = [(p[0], p[1], p[2]) for p in self.state.pending_images]  # (group, page url, found_via)
        self.c._downloads.submit(self._take_images, todo).result()
        self.state.pending_images = []
        self._checkpoint()

    def _take_images(self, todo: list[tuple[Any, str, str]]) -> None:
        """Per photo (a group of versions, best first): skip furniture, then download the best
        on-site version robots.txt allows (in Content-Length order when no width orders them),
        falling back to the next when one fails; the versions not downloaded are counted."""
        for group, page_url, via in todo:
            if isinstance(group, str):  # a checkpoint written before versions were grouped
                group = {"urls": [group], "vias": [""]}
            urls = [u for u in group["urls"] if u not in self.seen_images]
            if not urls:
                continue
            self.seen_images.update(urls)
            self.report.images_found += 1
            onsite = [u for u in urls if is_same_site(u, self.browser_hosts)]
            # tracking pixels, ad networks: never requested
            self.blocked_images[IMAGE_OFFSITE] += len(urls) - len(onsite)
            if not onsite:
                continue
            if group.get("junk"):
                self.skipped_images[group["junk"]] += 1
                continue
            if (rule := rule_role(self.site, onsite[0], page_url)) is None and not self.site.roles_from_image \
                    and self.site.default_role is None:
                self.report.images_skipped_no_role += 1
                continue
            allowed = [u for u in onsite if self._allowed_by_robots(u, page_url)]
            if group.get("head") and len(allowed) > 1 and self.c.config.head_for_size:
                allowed = self._by_content_length(allowed, page_url)
            vias = dict(zip(group["urls"], group.get("vias") or [], strict=False))
            widths = dict(zip(group["urls"], group.get("widths") or [], strict=False))
            versions = tuple({"url": u, "width": widths.get(u), "source": vias.get(u)} for u in group["urls"])
            for i, url in enumerate(allowed):
                if self._download(url, page_url, rule, via, source=vias.get(url) or "", versions=versions):
                    self.skipped_images[SMALLER_VERSION] += len(allowed) - i - 1
                    break

    def _by_content_length(self, urls: list[str], page_url: str) -> list[str]:
        """``urls`` ordered by the Content-Length their HEAD answers, largest first (stable; an
        answer without one keeps its place after those with one)."""
        sizes = {}
        for u in urls[:6]:
            self.report.head_requests += 1
            sizes[u] = self.c.fetcher.content_length(u, delay_s=self.c.delay_for(u, self.site), referer=page_url)
        return sorted(urls, key=lambda u: -(sizes.get(u) or -1))

    def _download(self, url: str, page_url: str, rule: RoleDecision | None, via: str, *, source: str,
                  versions: tuple[dict[str, Any], ...]) -> bool:
        """Download and register one version; False when the download failed (try the next)."""
        try:
            got = self.c.fetcher.fetch_image(url, delay_s=self.c.delay_for(url, self.site),
                                             allowed_hosts=frozenset(self.redirect_hosts), referer=page_url)
        except FetchError as exc:
            self.report.images_failed.append(ImageFailure(url=url, page_url=page_url, code=exc.code, message=str(exc)))
            if isinstance(exc, OffSiteRedirectError):
                self.report.off_site_redirects.append(OffSiteRedirect(url=url, to=exc.target, kind="image"))
            elif isinstance(exc, RedirectBlockedByRobots):
                self.report.robots_blocked.append(exc.target)
            return False
        self.report.images_downloaded += 1
        banner = self._banner_shape(got.data)
        if banner is not None:
            outcome = ImageOutcome("rejected", BANNER, banner)
            decision = rule or RoleDecision(None, {})
        else:
            decision = rule or self.c.roles.by_image(self.site, got.data)
            outcome = self.c.register(self.on_image, ImageCandidate(
                image_url=url, page_url=page_url, role=decision.role or "garment", data=got.data, site=self.site.name,
                category=self.category, licence=self.site.licence, content_type=got.content_type,
                final_url=got.final_url, found_via=via, role_evidence=decision.evidence,
                versions=versions if len(versions) > 1 else ()))
        self.statuses[outcome.status] += 1
        role_by = str(decision.evidence.get("by") or "")
        if role_by and outcome.status == "registered":
            self.roles_by[role_by] += 1
        if outcome.code:
            self.rejections[outcome.code] += 1
        self.report.images.append(ImageRecord(url=url, page_url=page_url, role=decision.role or "", status=outcome.status,
                                              code=outcome.code, found_via=via, source=source,
                                              versions=len(versions), role_by=role_by))
        return True

    def _banner_shape(self, data: bytes) -> str | None:
        """A message when the downloaded image's header says it is a banner strip, else None."""
        if not self.c.config.skip_page_furniture:
            return None
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:  # not an image at all: registration refuses it with the loader's code
            return None
        if min(w, h) > 0 and max(w, h) / min(w, h) >= self.c.config.banner_aspect:
            return f"{w}x{h} is a banner shape (aspect at least {self.c.config.banner_aspect})"
        return None
