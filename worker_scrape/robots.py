"""robots.txt, fetched once per host and cached by a :class:`RobotsCache` (in distributed mode
shared by every worker through Redis: :class:`SharedRobots`).

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

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import requests
from protego import Protego

from worker_scrape.errors import FetchConnectionError, FetchTimeout, PolitenessUnavailable
from worker_scrape.reader import bounded_session, open_url
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key

if TYPE_CHECKING:
    from redis import Redis

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
    text: str = ""  # for "ok": the file as parsed, so the rules can be rebuilt elsewhere

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
    text = body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
    return RobotsEntry(status="ok", parser=Protego.parse(text), text=text)


class SharedRobots:
    """robots.txt entries shared by every worker through Redis, so a host's file is fetched once
    for all of them. Each host is one key, ``synthpipe:robots:<scheme>://<host>``, holding JSON
    (status, allow_all, why, and the text for ``ok``: the rules are parsed again on read; no
    pickle), set to expire when the entry would go stale (``ttl_s``). A Redis that cannot be
    reached raises :class:`~worker_scrape.errors.PolitenessUnavailable`."""

    PREFIX = "synthpipe:robots:"

    def __init__(self, client: Redis) -> None:
        from redis.exceptions import RedisError  # here: redis is imported only in distributed mode

        self._redis = client
        self._errors = RedisError

    def get(self, key: str) -> RobotsEntry | None:
        """The entry for ``key`` (``scheme://host``), its ``fetched_at`` set so that it goes stale
        here when the shared key expires; None when no worker holds a fresh one."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self.PREFIX + key)
                pipe.pttl(self.PREFIX + key)
                raw, ttl_ms = pipe.execute()
        except self._errors as exc:
            raise PolitenessUnavailable(f"robots.txt cache in Redis cannot be reached: {exc}") from exc
        if raw is None or ttl_ms is None or int(ttl_ms) <= 0:
            return None
        try:
            data = json.loads(raw)
            status = data["status"]
            if status not in ("ok", "missing", "forbidden", "unreachable"):
                raise ValueError(status)
            age = max(0.0, float(data["ttl_s"]) - int(ttl_ms) / 1000)
            fetched_at = time.monotonic() - age
            if status == "ok":
                text = str(data["text"])
                return RobotsEntry(status="ok", parser=Protego.parse(text), text=text, fetched_at=fetched_at)
            return RobotsEntry(status=cast(Literal["missing", "forbidden", "unreachable"], status),
                               allow_all=bool(data["allow_all"]), why=str(data["why"]), fetched_at=fetched_at)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("robots.txt cache: unreadable entry for %s (%s); fetching again", key, exc)
            return None

    def put(self, key: str, entry: RobotsEntry, ttl_s: float) -> None:
        """Share ``entry`` for ``key`` for ``ttl_s`` seconds."""
        data = {"status": entry.status, "allow_all": entry.allow_all, "why": entry.why, "text": entry.text,
                "ttl_s": ttl_s}
        try:
            self._redis.set(self.PREFIX + key, json.dumps(data), px=max(1, int(ttl_s * 1000)))
        except self._errors as exc:
            raise PolitenessUnavailable(f"robots.txt cache in Redis cannot be reached: {exc}") from exc


class RobotsCache:
    """Per-host robots.txt cache. Thread-safe; each host's file is requested once, and again
    when its entry is older than ``max_age_s`` (RFC 9309: at most 24 hours) or, for a host that
    could not be reached, than ``retry_unreachable_s``: a long-lived worker sees rules change.

    With ``shared`` (distributed mode) an entry another worker fetched is used as it is, with the
    same expiry, and a fetched one is shared; the shared cache is read again once this worker holds
    the host's politeness slot, so workers that asked at once still fetch the file only once."""

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
        shared: SharedRobots | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.session = session or bounded_session()
        self.throttle = throttle or HostThrottle()
        self.timeout_s = timeout_s  # one read
        self.deadline_s = deadline_s  # the whole fetch, however slowly the server sends
        self.on_unreachable = on_unreachable
        self.max_age_s = max_age_s
        self.retry_unreachable_s = retry_unreachable_s
        self.shared = shared
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
                found = self._shared_entry(key) or self._fetch(url, delay_s, key)
                with self._lock:
                    self._entries[key] = found
            return found

    def _max_age(self, entry: RobotsEntry) -> float:
        return self.retry_unreachable_s if entry.status == "unreachable" else self.max_age_s

    def _fresh(self, entry: RobotsEntry) -> bool:
        return time.monotonic() - entry.fetched_at < self._max_age(entry)

    def _shared_entry(self, key: str) -> RobotsEntry | None:
        if self.shared is None:
            return None
        found = self.shared.get(key)
        return found if found is not None and self._fresh(found) else None

    def allowed(self, url: str, delay_s: float = 0.0) -> bool:
        """True if the configured User-Agent may fetch ``url``."""
        return self.entry(url, delay_s).can_fetch(self.user_agent, url)

    def crawl_delay(self, url: str, delay_s: float = 0.0) -> float | None:
        """The host's ``Crawl-delay`` for our User-Agent, if it sets one."""
        return self.entry(url, delay_s).crawl_delay(self.user_agent)

    def sitemaps(self, url: str, delay_s: float = 0.0) -> list[str]:
        """The ``Sitemap:`` URLs of ``url``'s host."""
        return self.entry(url, delay_s).sitemaps

    def _fetch(self, url: str, delay_s: float, key: str) -> RobotsEntry:
        with self.throttle.slot(host_key(url), delay_s):
            found = self._shared_entry(key)  # fetched by another worker while this one waited
            if found is not None:
                return found
            entry = self._request(url)
            if self.shared is not None:  # still in the slot: a worker waiting for it finds the entry
                self.shared.put(key, entry, self._max_age(entry))
        return entry

    def _request(self, url: str) -> RobotsEntry:
        """Ask ``url``'s host for robots.txt (inside its politeness slot) and read the answer."""
        robots_url = self.robots_url(url)
        try:
            with open_url(
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
