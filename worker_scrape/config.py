"""Crawler settings (filled from ``common.settings``' scrape section by the stage service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker_scrape.urls import TrapLimits

DEFAULT_USER_AGENT = "synthpipe-crawler/0.1 (+https://github.com/synthpipe/synthpipe)"


class CrawlConfig(BaseModel):
    """Everything the crawler and the fetcher need to know that is not in the site file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_agent: str = Field(default=DEFAULT_USER_AGENT, min_length=1)
    page_timeout_s: float = Field(default=30.0, gt=0, description="browser page load timeout")
    download_timeout_s: float = Field(
        default=30.0, gt=0, description="whole image download, and each read"
    )
    max_image_bytes: int = Field(default=20_000_000, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    chromium_path: Path = Path("/usr/bin/chromium")
    chromedriver_path: Path = Path("/usr/bin/chromedriver")
    headless: bool = True
    extra_browser_args: tuple[str, ...] = ()
    reuse_browser: bool = Field(
        default=True, description="one browser per batch (False: one per page)"
    )
    max_browser_restarts: int = Field(
        default=10, ge=0, description="per Crawler; beyond it BrowserError"
    )
    settle_s: float = Field(
        default=0.5, ge=0, description="wait after load and scrolling for late images"
    )
    scroll_steps: int = Field(
        default=6, ge=0, description="viewport-high scroll steps to trigger lazy loaders"
    )
    css_backgrounds: bool = True
    max_images_per_page: int | None = Field(default=None, ge=1)
    robots_on_unreachable: Literal["deny", "allow"] = "deny"
    max_url_length: int = Field(default=2048, ge=32)
    max_path_depth: int = Field(default=12, ge=1)
    max_segment_repeats: int = Field(default=3, ge=1)
    max_query_variants: int = Field(
        default=50, ge=1, description="distinct queries followed per path"
    )
    max_crawl_seconds: float | None = Field(
        default=None, gt=0, description="per site; None: no limit"
    )

    @property
    def trap_limits(self) -> TrapLimits:
        return TrapLimits(
            max_url_length=self.max_url_length,
            max_path_depth=self.max_path_depth,
            max_segment_repeats=self.max_segment_repeats,
            max_query_variants=self.max_query_variants,
        )

    @classmethod
    def from_settings(cls, scrape_settings: Any, **overrides: Any) -> CrawlConfig:
        """Build from any object or mapping with some of these fields (e.g. the scrape
        section of the settings); fields this model does not know are ignored."""
        if isinstance(scrape_settings, dict):
            values = dict(scrape_settings)
        elif hasattr(scrape_settings, "model_dump"):
            values = scrape_settings.model_dump()
        else:
            values = vars(scrape_settings)
        known = {k: v for k, v in values.items() if k in cls.model_fields}
        return cls(**{**known, **overrides})
