"""Per-host politeness: one request at a time per host, at least ``delay_s`` between the
end of one request and the start of the next.

The crawler's browser page loads, robots.txt fetches, sitemap reads and image downloads all go
through the same throttle, so the delay holds across all of them. :class:`HostThrottle` keeps the
slot in this process (local mode); :class:`RedisHostThrottle` keeps it in the broker's Redis, so it
holds across every worker process and machine (distributed mode).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from common.core.security import broker_ssl_options
from worker_scrape.errors import PolitenessUnavailable

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)


class HostThrottle:
    """Serialises requests per host and spaces them ``delay_s`` apart.

    The gap is measured from the *end* of the previous request to the *start* of the next,
    so the server sees at least ``delay_s`` between consecutive requests whatever the
    request latency. Thread-safe.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._last_end: dict[str, float] = {}
        self.waited_s = 0.0

    def _lock_for(self, host: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(host)
            if lock is None:
                lock = self._locks[host] = threading.Lock()
            return lock

    @contextmanager
    def slot(self, host: str, delay_s: float) -> Iterator[None]:
        """Hold ``host`` for one request: wait out the delay, run the body, record its end."""
        host = host.lower()
        lock = self._lock_for(host)
        with lock:
            last = self._last_end.get(host)
            if last is not None and delay_s > 0:
                wait = last + delay_s - self._clock()
                if wait > 0:
                    log.debug("politeness: waiting %.3fs for %s", wait, host)
                    self.waited_s += wait
                    self._sleep(wait)
            try:
                yield
            finally:
                self._last_end[host] = self._clock()

    def last_request_end(self, host: str) -> float | None:
        """Clock value at the end of the last request to ``host`` (None if none yet)."""
        return self._last_end.get(host.lower())

    def close(self) -> None:
        """Nothing to release for the in-process slot."""


# --- shared across processes and machines (distributed mode) ---------------------------------

#: how long a crashed worker can keep a host: a live one renews its lease every third of this
LEASE_S = 30.0
#: the longest one wait on another worker's release blocks before the lease is looked at again
_MAX_BLOCK_S = 5.0
_KEY_PREFIX = "synthpipe:polite:"
_MAX_DELAY_S = 30 * 86400.0  # a Crawl-delay beyond this (a month) is treated as this
_KEEP_LAST_S = 86400.0  # a host's last request time is kept at least this long after it

# Times are the Redis server's (TIME, in microseconds), so the machines' clocks never meet.
# KEYS: lease, last. ARGV: token, lease_ms, delay_us.
# Returns {1, 0, 0} when the slot is taken; {0, wait_us, 0} when the delay has wait_us to run;
# {0, wait_us, 1} when another worker holds the host, its lease running out in wait_us.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then  -- a lease without expiry (never written so): give it one, never wait forever
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
if ttl >= 0 then return {0, ttl * 1000, 1} end
local last = tonumber(redis.call('GET', KEYS[2]) or '')
if last then
  local wait = last + tonumber(ARGV[3]) - now
  if wait > 0 then return {0, wait, 0} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, 0, 0}
"""
# KEYS: lease, last, wake. ARGV: token, keep_ms, lease_ms. Records the end of the request (even
# if the lease ran out meanwhile: the host saw the request) and wakes one waiter. The time is
# written as a string of digits: Lua would print a number this large in exponent form.
_RELEASE = """
local t = redis.call('TIME')
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])), 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], 1)
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""
# KEYS: lease. ARGV: token, lease_ms. 1 if the lease is still ours (and now extended), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisHostThrottle(HostThrottle):
    """:class:`HostThrottle` with the per-host slot in Redis, shared by every process and machine
    crawling through that Redis: one request in flight per host, at least ``delay_s`` from the end
    of one request to the start of the next, whichever worker made them.

    A host's slot is three keys: ``synthpipe:polite:{host}:lease`` (the holder's token, set with
    ``PX`` = ``lease_s`` and renewed every third of it while the request runs, so a crashed worker
    holds a host for at most ``lease_s``), ``:last`` (the end of the last request, on the Redis
    server's clock) and ``:wake`` (a release pushes one element to wake one waiter). Taking and
    releasing are Lua scripts, so each is atomic. A waiter sleeps for the delay's remaining time,
    or blocks on ``:wake`` until the holder releases (at most until its lease runs out); it never
    polls. Threads of one process queue on the in-process lock first, so one of them at a time
    asks Redis. A Redis that cannot be reached raises :class:`PolitenessUnavailable`.
    """

    def __init__(self, client: Redis, *, lease_s: float = LEASE_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from redis.exceptions import RedisError  # here: redis is imported only in distributed mode

        super().__init__(sleep=sleep)
        self._errors = RedisError
        self._redis = client
        self.lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))  # PX of the lease key
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, str] = {}  # lease key -> our token, renewed by the renewer thread
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @staticmethod
    def keys(host: str) -> tuple[str, str, str]:
        """The lease, last-request and wake keys of ``host`` (one hash slot, for Redis Cluster)."""
        base = f"{_KEY_PREFIX}{{{host.lower()}}}"
        return f"{base}:lease", f"{base}:last", f"{base}:wake"

    @contextmanager
    def slot(self, host: str, delay_s: float) -> Iterator[None]:
        host = host.lower()
        delay_s = min(max(delay_s, 0.0), _MAX_DELAY_S)
        lease, last, wake = self.keys(host)
        with self._lock_for(host):
            token = self._take(host, lease, last, wake, delay_s)
            try:
                yield
            finally:
                self._give(lease, last, wake, token, delay_s)

    def _take(self, host: str, lease: str, last: str, wake: str, delay_s: float) -> str:
        token = uuid.uuid4().hex
        lease_ms = self._lease_ms
        delay_us = int(delay_s * 1_000_000)
        while True:
            try:
                taken, wait_us, held = self._acquire(keys=[lease, last], args=[token, lease_ms, delay_us])
                if taken:
                    break
                wait = int(wait_us) / 1_000_000
                if held:  # in flight elsewhere: its release wakes one waiter; a dead holder's lease runs out
                    log.debug("politeness: %s is in flight elsewhere, waiting up to %.3fs", host, wait)
                    self._redis.blpop([wake], timeout=max(0.01, min(wait, _MAX_BLOCK_S)))
                    continue
            except self._errors as exc:
                raise _unavailable(exc) from exc
            log.debug("politeness: waiting %.3fs for %s", wait, host)
            self.waited_s += wait
            self._sleep(wait)
        with self._held_lock:
            self._held[lease] = token
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, name="politeness-lease", daemon=True)
                self._renewer.start()
        return token

    def _give(self, lease: str, last: str, wake: str, token: str, delay_s: float) -> None:
        with self._held_lock:
            self._held.pop(lease, None)
        keep_ms = int(max(_KEEP_LAST_S, 2 * delay_s) * 1000)
        try:
            self._release(keys=[lease, last, wake], args=[token, keep_ms, self._lease_ms])
        except self._errors as exc:
            raise _unavailable(exc) from exc

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._held_lock:
                held = list(self._held.items())
            for lease, token in held:
                try:
                    if not self._renew(keys=[lease], args=[token, self._lease_ms]):
                        log.warning("politeness: the lease %s ran out while its request was in flight", lease)
                except self._errors as exc:
                    log.warning("politeness: cannot renew %s: %s", lease, exc)

    def last_request_end(self, host: str) -> float | None:
        """End of the last request to ``host`` by any worker, in seconds on the Redis server's clock."""
        try:
            raw = self._redis.get(self.keys(host)[1])
        except self._errors as exc:
            raise _unavailable(exc) from exc
        return int(raw) / 1_000_000 if raw is not None else None

    def close(self) -> None:
        """Stop renewing leases (a request still in flight keeps its lease until it runs out)."""
        self._stop.set()


def _unavailable(exc: Exception) -> PolitenessUnavailable:
    return PolitenessUnavailable(f"politeness: the shared per-host slot in Redis cannot be reached: {exc}")


def shared_redis(broker_url: str | None, ca_file: Path | None = None) -> Redis | None:
    """The Redis client that shares politeness (the per-host slot, robots.txt) between workers:
    the broker's first ``redis://`` or ``rediss://`` URL, with the broker's TLS options (certificates
    checked, against ``ca_file`` when set) and its password or ACL user. None without a Redis broker."""
    if not broker_url:
        return None
    url = next((u.strip() for u in broker_url.split(";")
                if urlsplit(u.strip()).scheme.lower() in ("redis", "rediss")), None)
    if url is None:
        log.warning("politeness: the broker is not Redis; each worker process keeps its own per-host slot")
        return None
    import redis

    ssl_options = broker_ssl_options(url, ca_file)  # what Celery gets as broker_use_ssl
    return redis.Redis.from_url(url, socket_connect_timeout=10.0, socket_timeout=_MAX_BLOCK_S + 25.0,
                                health_check_interval=30,
                                **(ssl_options if isinstance(ssl_options, dict) else {}))
