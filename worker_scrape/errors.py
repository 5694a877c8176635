"""Errors of the scrape stage, all in :mod:`common.core.errors`' hierarchy with stable reason codes.

A fetch or page failure is a value in the crawl report (``code`` + ``message``), counted by code;
only :class:`BrowserMissing` (a settings error: the runner gives the jobs back) and
:class:`BrowserError` (the browser kept dying: retried) end a crawl batch.
"""

from __future__ import annotations

from common.core.errors import ConfigError, InputError, SynthpipeError, TransientError

INSTALL_HINT = "scripts/install.sh (or apt-get install -y chromium chromium-driver) installs both"


class SiteError(InputError, ValueError):
    """The site file is invalid. The message is one line naming the file position and key;
    ``errors`` keeps every problem found (same format)."""

    default_code = "sites.invalid"

    def __init__(self, message: str, errors: list[str] | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.errors: list[str] = errors if errors is not None else [message]


class FetchError(SynthpipeError):
    """A request for one URL (an image, a page, a sitemap) came to nothing. ``code`` says why;
    the message says it for people. Concrete errors are :class:`FetchRefused` (final for this URL)
    or :class:`FetchUnavailable` (may pass)."""

    default_code = "fetch.failed"

    def __init__(self, message: str, url: str = "", *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.url = url

    @property
    def reason(self) -> str:
        """The message (kept for readers of older reports)."""
        return str(self)


class FetchRefused(FetchError, InputError):
    """The server's answer rules the URL out: an HTTP error status, not an image, too large,
    a redirect that leaves the site or that robots.txt forbids."""

    default_code = "fetch.refused"


class FetchUnavailable(FetchError, TransientError):
    """No usable answer: a timeout or a connection that failed."""

    default_code = "fetch.unavailable"


class FetchTimeout(FetchUnavailable):
    """The fetch ran past its total deadline, or one read waited longer than its timeout."""

    default_code = "fetch.timeout"
    why = "timeout"

    def __init__(self, url: str = "") -> None:
        super().__init__("timeout", url)


class FetchConnectionError(FetchUnavailable):
    """The connection failed; ``why`` is a short reason (``connection refused``, ``DNS lookup
    failed``, ...)."""

    default_code = "fetch.connection"

    def __init__(self, message: str, url: str = "", *, why: str = "connection failed") -> None:
        super().__init__(message, url)
        self.why = why


class HttpStatus(FetchRefused):
    default_code = "fetch.http_status"

    def __init__(self, status: int, url: str = "", *, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}", url, code=code)
        self.status = status


class OffSiteRedirect(FetchRefused):
    """A redirect to a host outside the allowed ones; ``host`` is that host."""

    default_code = "fetch.offsite_redirect"

    def __init__(self, host: str, target: str, url: str = "") -> None:
        super().__init__(f"redirect off-site to host {host}", url)
        self.host = host
        self.target = target


class RedirectBlockedByRobots(FetchRefused):
    """A redirect to an URL that robots.txt disallows."""

    default_code = "robots.disallowed"

    def __init__(self, target: str, url: str = "") -> None:
        super().__init__(f"redirect blocked by robots.txt: {target}", url)
        self.target = target


class HostUnreachable(TransientError):
    """The host never answered (its robots.txt could not be read): nothing of it is fetched."""

    default_code = "host.unreachable"


class PolitenessUnavailable(TransientError):
    """The shared per-host politeness state (distributed mode: the broker's Redis) cannot be
    reached; the crawl stops and its job is retried, rather than crawl without politeness."""

    default_code = "politeness.unavailable"


class BrowserError(TransientError):
    """The browser could not be started, or died more often than allowed."""

    default_code = "browser.failed"


class BrowserMissing(ConfigError):
    """Chromium or chromedriver is not where the settings say: a settings error, never retried."""

    default_code = "browser.missing"


class PageError(FetchUnavailable):
    """A page could not be rendered (``page.timeout``, ``page.browser``)."""

    default_code = "page.browser"
