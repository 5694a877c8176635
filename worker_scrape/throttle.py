"""Per-host politeness: one request at a time per host, at least ``delay_s`` between the
end of one request and the start of the next.

The crawler's browser page loads, robots.txt fetches and image downloads all go through the
same :class:`HostThrottle`, so the delay holds across all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
