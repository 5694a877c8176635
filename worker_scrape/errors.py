"""Error types of the scrape stage."""

from __future__ import annotations


class ScrapeError(Exception):
    """Base class of the errors raised on purpose by ``worker_scrape``."""


class SiteError(ScrapeError, ValueError):
    """The site file is invalid. The message is one line naming the file position and key;
    ``errors`` keeps every problem found (same format)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = errors if errors is not None else [message]


class FetchError(ScrapeError):
    """An image could not be downloaded; ``reason`` is short and specific
    (``"HTTP 404"``, ``"timeout"``, ``"not an image: text/html"``, ``"too large: ..."``,
    ``"redirect off-site to host X"``, ``"connection error: ..."``)."""

    def __init__(self, reason: str, url: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.url = url


class BrowserError(ScrapeError):
    """The browser could not be started, or died more often than allowed."""


class OffSiteRedirect(FetchError):
    """A download was redirected to a host outside the allowed ones; ``host`` is that host."""

    def __init__(self, host: str, target: str, url: str = "") -> None:
        super().__init__(f"redirect off-site to host {host}", url)
        self.host = host
        self.target = target


class RedirectBlockedByRobots(FetchError):
    """A download was redirected to an URL that robots.txt disallows."""

    def __init__(self, target: str, url: str = "") -> None:
        super().__init__(f"redirect blocked by robots.txt: {target}", url)
        self.target = target
