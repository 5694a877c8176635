"""What a crawl of one site reports, and the checkpoint it resumes from after a crash.

Every failure carries a stable reason ``code`` (``fetch.http_status``, ``robots.disallowed``,
``page.timeout``, ``host.unreachable``, ...) and a message for people; counts are by code.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, Field


class PageFailure(BaseModel):
    url: str
    code: str
    message: str = ""


class ImageFailure(BaseModel):
    url: str
    page_url: str
    code: str
    message: str = ""


class OffSiteRedirect(BaseModel):
    url: str
    to: str
    kind: str  # "page" or "image"


class ImageRecord(BaseModel):
    url: str
    page_url: str
    role: str
    status: str  # registered, replaced (a larger version of a stored photo), duplicate, near_duplicate, rejected
    code: str | None = None  # why, for a refusal
    found_via: str = "link"  # start, link, sitemap (the page's way in) or image_sitemap
    source: str = ""  # where on the page the URL was: img, srcset, jsonld, state, anchor, data_attr ...
    versions: int = 1  # renditions of the photo found on the page
    role_by: str = ""  # site_rule, detector or default


class SitemapReport(BaseModel):
    files_read: list[str] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)  # sitemap URL -> reason code
    pages: int = 0  # page URLs taken as seeds
    images: int = 0  # image-sitemap entries
    entries_skipped: dict[str, int] = Field(default_factory=dict)  # "off-site", "allow/deny" -> n
    truncated: bool = False


class CrawlReport(BaseModel):
    """JSON-serialisable summary of one site's crawl (``report.model_dump(mode="json")``)."""

    site: str
    category: str
    start_urls: list[str]
    pages_visited: list[str] = Field(default_factory=list)
    pages_found_via: dict[str, int] = Field(default_factory=dict)  # start / link / sitemap -> pages
    pages_failed: list[PageFailure] = Field(default_factory=list)
    images_found: int = 0
    images_downloaded: int = 0
    images_failed: list[ImageFailure] = Field(default_factory=list)
    images_skipped_no_role: int = 0
    images_blocked: dict[str, int] = Field(default_factory=dict)  # never requested: reason code -> n
    images_skipped: dict[str, int] = Field(default_factory=dict)  # furniture and smaller versions: code -> n
    roles_by: dict[str, int] = Field(default_factory=dict)  # site_rule / detector / default -> images
    head_requests: int = 0  # HEAD requests that ordered versions by Content-Length
    images_by_status: dict[str, int] = Field(default_factory=dict)
    rejections: dict[str, int] = Field(default_factory=dict)  # reason code -> n
    images: list[ImageRecord] = Field(default_factory=list)
    robots_blocked: list[str] = Field(default_factory=list)
    off_site_redirects: list[OffSiteRedirect] = Field(default_factory=list)
    blocked_requests: int = 0  # off-site requests stopped inside the browser
    blocked_by_type: dict[str, int] = Field(default_factory=dict)  # DevTools resource type -> n
    blocked_samples: list[dict[str, str]] = Field(default_factory=list)  # the first 50
    sitemap: SitemapReport = Field(default_factory=SitemapReport)
    links_skipped: dict[str, int] = Field(default_factory=dict)  # reason -> n
    browser_restarts: int = 0
    resumed: int = 0  # times this crawl went on from a checkpoint
    stopped: str = ""  # "done", "max_pages", "max_seconds"
    seconds: float = 0.0

    def failures_by_code(self) -> dict[str, int]:
        counts = Counter(f.code for f in self.pages_failed)
        counts.update(f.code for f in self.images_failed)
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        """Counts only (for logs and job rows)."""
        return {
            "site": self.site,
            "category": self.category,
            "pages_visited": len(self.pages_visited),
            "pages_found_via": self.pages_found_via,
            "pages_failed": len(self.pages_failed),
            "images_found": self.images_found,
            "images_downloaded": self.images_downloaded,
            "images_failed": len(self.images_failed),
            "images_blocked": self.images_blocked,
            "images_skipped": self.images_skipped,
            "images_by_status": self.images_by_status,
            "rejections": self.rejections,
            "roles_by": self.roles_by,
            "failures_by_code": self.failures_by_code(),
            "robots_blocked": len(self.robots_blocked),
            "off_site_redirects": len(self.off_site_redirects),
            "blocked_requests": self.blocked_requests,
            "sitemap_pages": self.sitemap.pages,
            "browser_restarts": self.browser_restarts,
            "resumed": self.resumed,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


class CrawlState(BaseModel):
    """A checkpoint of one site's crawl, written after every page: what is left to visit, what was
    seen, the images of the last page still to fetch, and the report so far."""

    frontier: list[list[Any]] = Field(default_factory=list)  # [url, depth, found_via]
    seen_pages: list[str] = Field(default_factory=list)
    seen_images: list[str] = Field(default_factory=list)
    # [group, page url, found_via]; group: {"urls": [...best first], "widths", "vias", "junk", "head"}
    # (an older checkpoint's [image url, page url, found_via] reads as a group of one)
    pending_images: list[list[Any]] = Field(default_factory=list)
    sitemap_images: dict[str, list[str]] = Field(default_factory=dict)  # page -> image-sitemap images
    sitemaps_read: bool = False
    page_loads: int = 0
    report: CrawlReport
