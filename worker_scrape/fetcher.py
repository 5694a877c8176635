"""Image download with ``requests`` (never the browser) through the bounded reader
(:mod:`worker_scrape.reader`: one total deadline over all hops, a byte limit): content-type
checked, redirects followed hop by hop and refused when they leave the allowed hosts, every hop
checked against robots.txt and spaced by the per-host delay."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urljoin

import requests

from common.core.settings import ScrapeSettings
from worker_scrape.errors import (
    FetchError,
    FetchRefused,
    HttpStatus,
    OffSiteRedirect,
    RedirectBlockedByRobots,
)
from worker_scrape.reader import bounded_session, open_url
from worker_scrape.robots import RobotsCache
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key, normalize_url

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchedImage:
    url: str  # the URL asked for
    final_url: str  # after redirects
    content_type: str
    data: bytes


class Fetcher:
    """Downloads images. One :class:`requests.Session` (connection reuse) per fetcher."""

    def __init__(
        self,
        config: ScrapeSettings,
        throttle: HostThrottle | None = None,
        robots: RobotsCache | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.throttle = throttle or HostThrottle()
        self.robots = robots
        self.session = session or bounded_session()
        self.session.headers["User-Agent"] = config.user_agent

    def close(self) -> None:
        self.session.close()

    def fetch_image(
        self,
        url: str,
        *,
        delay_s: float = 0.0,
        allowed_hosts: frozenset[str] | None = None,
        referer: str | None = None,
    ) -> FetchedImage:
        """Download ``url`` and return its bytes, or raise a :class:`~worker_scrape.errors.FetchError`.

        Redirects may only go to ``url``'s own host or to one of ``allowed_hosts``
        (``host[:port]`` keys); any other target is refused before it is requested.
        """
        hosts = {host_key(url)} | set(allowed_hosts or ())
        current = url
        deadline = time.monotonic() + min(self.config.download_timeout_s, self.config.fetch_deadline_s)
        for _hop in range(self.config.max_redirects + 1):
            if (
                self.robots is not None
                and current != url
                and not self.robots.allowed(current, delay_s)
            ):
                raise RedirectBlockedByRobots(current, url)
            with self.throttle.slot(host_key(current), delay_s):
                location, result = self._request(current, deadline, referer)
            if result is not None:
                return FetchedImage(
                    url=url, final_url=current, content_type=result[0], data=result[1]
                )
            target = normalize_url(urljoin(current, location))
            if target is None:
                raise FetchRefused(f"redirect to unsupported URL {location[:100]!r}", url, code="fetch.bad_redirect")
            target_host = host_key(target)
            if target_host not in hosts:
                raise OffSiteRedirect(target_host, target, url)
            current = target
        raise FetchRefused("too many redirects", url, code="fetch.too_many_redirects")

    def content_length(self, url: str, *, delay_s: float = 0.0, referer: str | None = None) -> int | None:
        """The ``Content-Length`` a HEAD request for ``url`` answers (one request, in the host's
        politeness slot; no redirect followed), or None when there is none or it fails."""
        headers = {"Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8"}
        if referer:
            headers["Referer"] = referer
        deadline = time.monotonic() + min(self.config.download_timeout_s, self.config.fetch_deadline_s)
        try:
            with self.throttle.slot(host_key(url), delay_s), open_url(
                    self.session, url, deadline=deadline, read_timeout_s=self.config.download_timeout_s,
                    headers=headers, method="HEAD") as resp:
                declared = resp.headers.get("Content-Length", "")
                ok = 200 <= resp.status < 300 and resp.headers.get("Content-Type", "").lower().startswith("image/")
                return int(declared) if ok and declared.isdigit() else None
        except FetchError:
            return None

    def _request(
        self, url: str, deadline: float, referer: str | None
    ) -> tuple[str, tuple[str, bytes] | None]:
        """One request. Returns ``(location, None)`` for a redirect, else
        ``("", (content_type, data))``."""
        headers = {"Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8"}
        if referer:
            headers["Referer"] = referer
        with open_url(self.session, url, deadline=deadline, read_timeout_s=self.config.download_timeout_s,
                      headers=headers) as resp:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise FetchRefused(f"HTTP {resp.status} without Location", url, code="fetch.bad_redirect")
                return location, None
            if resp.status >= 300:
                raise HttpStatus(resp.status, url)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise FetchRefused(f"not an image: {ctype or '(no content type)'}", url, code="fetch.not_an_image")
            limit = self.config.max_image_bytes
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise FetchRefused(f"too large: {declared} bytes > {limit}", url, code="fetch.too_large")
            return "", (ctype, resp.read(limit, refuse_larger=True))
