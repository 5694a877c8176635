"""robots.txt, fetched once per host and cached for the life of a :class:`RobotsCache`
(one crawl batch).

Rules are read by RFC 9309 with Protego (the parser Scrapy uses): the group of the longest
matching user-agent product token (else ``*``), ``*`` and ``$`` in paths, the longest matching
rule wins and ``Allow`` wins a tie; ``Crawl-delay`` and ``Sitemap:`` lines are read too.
Outcomes of the fetch:

* 2xx: the file is parsed (the first 512 KiB).
* 401 / 403: everything is disallowed (as ``urllib.robotparser`` does).
* any other 4xx (404, 410, ...): no rules, everything is allowed.
* 5xx, timeout (a read, or the whole fetch past ``deadline_s``), connection error:
  ``on_unreachable`` decides. The default, ``"deny"``, treats
  the host as fully disallowed for this batch: a server that cannot serve its robots.txt is
  not crawled (the conservative reading of RFC 9309 section 2.3.1.4). ``"allow"`` crawls it
  as if there were no robots.txt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import requests
from protego import Protego

from worker_scrape.errors import FetchConnectionError, FetchTimeout
from worker_scrape.reader import bounded_session, open_url
from worker_scrape.reader import connection_failure as connection_failure  # re-exported
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key

log = logging.getLogger(__name__)

MAX_ROBOTS_BYTES = 512 * 1024


@dataclass
class RobotsEntry:
    """What is known about one host's robots.txt."""

    status: Literal["ok", "missing", "forbidden", "unreachable"]
    parser: Protego | None = None
    allow_all: bool = False
    why: str = ""  # for "unreachable": "timeout", "connection refused", "HTTP 503", ...
    fetched_at: float = field(default_factory=time.monotonic)

    def can_fetch(self, user_agent: str, url: str) -> bool:
        if self.parser is not None:
            return bool(self.parser.can_fetch(url, user_agent))
        return self.allow_all

    def crawl_delay(self, user_agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(user_agent)
        return float(delay) if delay is not None else None

    @property
    def sitemaps(self) -> list[str]:
        """The file's ``Sitemap:`` URLs, in file order."""
        return list(self.parser.sitemaps) if self.parser is not None else []


def parse_robots(body: bytes) -> RobotsEntry:
    """The entry for a robots.txt answered with 2xx: ``body`` (at most :data:`MAX_ROBOTS_BYTES`
    are read) parsed by RFC 9309, undecodable bytes replaced."""
    return RobotsEntry(status="ok", parser=Protego.parse(body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")))


class RobotsCache:
    """Per-host robots.txt cache. Thread-safe; each host's file is requested once, and again
    when its entry is older than ``max_age_s`` (RFC 9309: at most 24 hours) or, for a host that
    could not be reached, than ``retry_unreachable_s``: a long-lived worker sees rules change."""

    def __init__(
        self,
        user_agent: str,
        *,
        session: requests.Session | None = None,
        throttle: HostThrottle | None = None,
        timeout_s: float = 15.0,
        deadline_s: float = 120.0,
        on_unreachable: Literal["deny", "allow"] = "deny",
        max_age_s: float = 24 * 3600.0,
        retry_unreachable_s: float = 600.0,
    ) -> None:
        self.user_agent = user_agent
        self.session = session or bounded_session()
        self.throttle = throttle or HostThrottle()
        self.timeout_s = timeout_s  # one read
        self.deadline_s = deadline_s  # the whole fetch, however slowly the server sends
        self.on_unreachable = on_unreachable
        self.max_age_s = max_age_s
        self.retry_unreachable_s = retry_unreachable_s
        self._entries: dict[str, RobotsEntry] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def robots_url(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "/robots.txt", "", ""))

    def entry(self, url: str, delay_s: float = 0.0) -> RobotsEntry:
        """The cached entry for ``url``'s host, fetching robots.txt on first use."""
        key = f"{urlsplit(url).scheme.lower()}://{host_key(url)}"
        with self._lock:
            found = self._entries.get(key)
            if found is not None and self._fresh(found):
                return found
            host_lock = self._host_locks.setdefault(key, threading.Lock())
        with host_lock:
            found = self._entries.get(key)
            if found is None or not self._fresh(found):
                found = self._fetch(url, delay_s)
                with self._lock:
                    self._entries[key] = found
            return found

    def _fresh(self, entry: RobotsEntry) -> bool:
        age = time.monotonic() - entry.fetched_at
        return age < (self.retry_unreachable_s if entry.status == "unreachable" else self.max_age_s)

    def allowed(self, url: str, delay_s: float = 0.0) -> bool:
        """True if the configured User-Agent may fetch ``url``."""
        return self.entry(url, delay_s).can_fetch(self.user_agent, url)

    def crawl_delay(self, url: str, delay_s: float = 0.0) -> float | None:
        """The host's ``Crawl-delay`` for our User-Agent, if it sets one."""
        return self.entry(url, delay_s).crawl_delay(self.user_agent)

    def sitemaps(self, url: str, delay_s: float = 0.0) -> list[str]:
        """The ``Sitemap:`` URLs of ``url``'s host."""
        return self.entry(url, delay_s).sitemaps

    def _fetch(self, url: str, delay_s: float) -> RobotsEntry:
        robots_url = self.robots_url(url)
        try:
            with self.throttle.slot(host_key(url), delay_s), open_url(
                self.session, robots_url, deadline=time.monotonic() + self.deadline_s,
                read_timeout_s=self.timeout_s, headers={"User-Agent": self.user_agent}, allow_redirects=True,
            ) as resp:
                status = resp.status
                body = resp.read(MAX_ROBOTS_BYTES) if status < 300 else b""
        except (FetchTimeout, FetchConnectionError) as exc:
            return self._unreachable(robots_url, exc.why)
        if status in (401, 403):
            log.info("robots.txt %s: HTTP %d, host disallowed", robots_url, status)
            return RobotsEntry(status="forbidden", allow_all=False)
        if 400 <= status < 500:
            log.debug("robots.txt %s: HTTP %d, everything allowed", robots_url, status)
            return RobotsEntry(status="missing", allow_all=True)
        if status >= 500:
            return self._unreachable(robots_url, f"HTTP {status}")
        return parse_robots(body)

    def unreachable_reason(self, url: str) -> str | None:
        """Why ``url``'s host could not be asked for robots.txt (None if it answered)."""
        entry = self.entry(url)
        return entry.why if entry.status == "unreachable" else None

    def _unreachable(self, robots_url: str, why: str) -> RobotsEntry:
        allow = self.on_unreachable == "allow"
        log.warning(
            "robots.txt %s unreachable (%s): host %s",
            robots_url,
            why,
            "crawled as unrestricted" if allow else "not crawled",
        )
        return RobotsEntry(status="unreachable", allow_all=allow, why=why)
