"""Image download with ``requests`` (never the browser): streamed with a byte limit,
content-type checked, redirects followed hop by hop and refused when they leave the allowed
hosts, every hop checked against robots.txt and spaced by the per-host delay."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
from urllib3.exceptions import ReadTimeoutError

from common.core.settings import ScrapeSettings
from worker_scrape.errors import (
    FetchRefused,
    FetchUnavailable,
    HttpStatus,
    OffSiteRedirect,
    RedirectBlockedByRobots,
)
from worker_scrape.robots import RobotsCache
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key, normalize_url

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class FetchedImage:
    url: str  # the URL asked for
    final_url: str  # after redirects
    content_type: str
    data: bytes


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


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
        self.session = session or requests.Session()
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
        deadline = time.monotonic() + self.config.download_timeout_s
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

    def _request(
        self, url: str, deadline: float, referer: str | None
    ) -> tuple[str, tuple[str, bytes] | None]:
        """One request. Returns ``(location, None)`` for a redirect, else
        ``("", (content_type, data))``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchUnavailable("timeout", url, code="fetch.timeout")
        headers = {"Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8"}
        if referer:
            headers["Referer"] = referer
        try:
            resp = self.session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(remaining, 10.0), remaining),
            )
        except requests.Timeout:
            raise FetchUnavailable("timeout", url, code="fetch.timeout") from None
        except requests.RequestException as exc:
            raise FetchUnavailable(f"connection error: {_short(exc)}", url, code="fetch.connection") from None
        with resp:
            if resp.status_code in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise FetchRefused(f"HTTP {resp.status_code} without Location", url, code="fetch.bad_redirect")
                return location, None
            if resp.status_code >= 300:
                raise HttpStatus(resp.status_code, url)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise FetchRefused(f"not an image: {ctype or '(no content type)'}", url, code="fetch.not_an_image")
            limit = self.config.max_image_bytes
            declared = resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise FetchRefused(f"too large: {declared} bytes > {limit}", url, code="fetch.too_large")
            return "", (ctype, self._read(resp, url, limit, deadline))

    @staticmethod
    def _read(resp: requests.Response, url: str, limit: int, deadline: float) -> bytes:
        buf = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise FetchRefused(f"too large: more than {limit} bytes", url, code="fetch.too_large")
                if time.monotonic() > deadline:
                    raise FetchUnavailable("timeout", url, code="fetch.timeout")
        except requests.Timeout:
            raise FetchUnavailable("timeout", url, code="fetch.timeout") from None
        except requests.RequestException as exc:
            # requests reports a read timeout in the body as a ConnectionError
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise FetchUnavailable("timeout", url, code="fetch.timeout") from None
            raise FetchUnavailable(f"connection error: {_short(exc)}", url, code="fetch.connection") from None
        return bytes(buf)
