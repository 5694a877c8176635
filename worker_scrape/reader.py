"""The one way the crawler reads an URL over HTTP (robots.txt, sitemaps, images): a total
deadline from connecting to the last byte, and a byte cap.

A per-read socket timeout alone does not bound a fetch: a server that sends a byte every half
second never trips it. So every request runs under a :class:`_Watchdog` that, at the deadline,
shuts the connection's socket down; whatever was blocked in it (headers or body) returns at once
and the fetch fails with ``fetch.timeout``. The watchdog finds the socket through the connection
classes of :class:`BoundedAdapter`, which every crawler session mounts (:func:`bounded_session`,
:func:`mount_bounded`).

Every failure leaves as a :class:`~worker_scrape.errors.FetchError` (``fetch.timeout``,
``fetch.connection``, ``fetch.too_large``), whether ``requests``, urllib3 or the socket raised it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from worker_scrape.errors import FetchConnectionError, FetchError, FetchRefused, FetchTimeout

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
_current = threading.local()  # the watchdog of the request this thread is making


class _Watchdog:
    """Shuts down the socket of this thread's current request when ``deadline`` passes."""

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._conn: HTTPConnection | None = None
        self._armed = True
        self.expired = False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True

    def watch(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._conn = conn
            conn._synthpipe_watchdog = self  # type: ignore[attr-defined]
        if self.expired:  # the deadline passed before the connection was handed out
            self._fire()

    def _fire(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self.expired = True
            conn = self._conn
            # a connection handed back to the pool and reused by another request is not ours
            if conn is None or getattr(conn, "_synthpipe_watchdog", None) is not self:
                return
            sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        _current.watchdog = self
        self._timer.start()
        return self

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()

    def __exit__(self, *exc: object) -> None:
        self.disarm()
        _current.watchdog = None


def _watch_current(conn: HTTPConnection) -> None:
    watchdog: _Watchdog | None = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.watch(conn)


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _watch_current(self)
        super().request(*args, **kwargs)
        _watch_current(self)  # again: a deadline that passed while connecting finds the socket now


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _watch_current(self)
        super().request(*args, **kwargs)
        _watch_current(self)  # again: a deadline that passed while connecting finds the socket now


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class BoundedAdapter(HTTPAdapter):
    """An :class:`HTTPAdapter` whose connections the deadline watchdog can cut."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def mount_bounded(session: requests.Session, pool_size: int = 10) -> requests.Session:
    """Mount a :class:`BoundedAdapter` on ``session`` for http and https; returns ``session``."""
    adapter = BoundedAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def bounded_session(pool_size: int = 10) -> requests.Session:
    """A new session whose requests the deadline can cut."""
    return mount_bounded(requests.Session(), pool_size)


def connection_failure(exc: BaseException) -> str:
    """A short reason for a request that got no (whole) HTTP answer: DNS, refused, timeout, TLS,
    a body broken off."""
    text = str(exc)
    if _is_timeout(exc):
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
        return "connection broken off"
    if any(s in text for s in ("NameResolutionError", "Name or service not known", "nodename nor servname",
                               "Temporary failure in name resolution", "No address associated")):
        return "DNS lookup failed"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused"
    return type(exc).__name__


def _is_timeout(exc: BaseException) -> bool:
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    # requests reports a read timeout in a streamed body as a ConnectionError around urllib3's
    return isinstance(exc, timeouts) or bool(exc.args and isinstance(exc.args[0], timeouts))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class BoundedResponse:
    """An answer whose headers have arrived; :meth:`read` takes the body within the bounds."""

    def __init__(self, resp: requests.Response, url: str, watchdog: _Watchdog) -> None:
        self._resp = resp
        self._watchdog = watchdog
        self.url = url
        self.status: int = resp.status_code
        self.headers: CaseInsensitiveDict[str] = resp.headers

    def read(self, max_bytes: int, *, refuse_larger: bool = False) -> bytes:
        """The body (content-decoded), at most ``max_bytes``: a longer one is cut there, or with
        ``refuse_larger`` refused (``fetch.too_large``)."""
        buf = bytearray()
        try:
            for chunk in self._resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    if refuse_larger:
                        raise FetchRefused(f"too large: more than {max_bytes} bytes", self.url,
                                           code="fetch.too_large")
                    break
                if self._watchdog.expired:
                    raise FetchTimeout(self.url)
        except _NETWORK_ERRORS as exc:
            raise _failure(exc, self.url, self._watchdog) from exc
        if self._watchdog.expired:  # a socket cut at the deadline reads like the end of the body
            raise FetchTimeout(self.url)
        return bytes(buf[:max_bytes])


def _failure(exc: BaseException, url: str, watchdog: _Watchdog) -> FetchError:
    if watchdog.expired or _is_timeout(exc):
        return FetchTimeout(url)
    return FetchConnectionError(f"connection error: {_short(exc)}", url, why=connection_failure(exc))


@contextlib.contextmanager
def open_url(
    session: requests.Session,
    url: str,
    *,
    deadline: float,
    read_timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    allow_redirects: bool = False,
    method: str = "GET",
) -> Iterator[BoundedResponse]:
    """GET (or ``method``) ``url`` and yield its answer once the headers are in; the body is read with
    :meth:`BoundedResponse.read`. Everything, connecting included, ends by ``deadline`` (a
    :func:`time.monotonic` value). Raises :class:`FetchTimeout` or :class:`FetchConnectionError`."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchTimeout(url)
    with _Watchdog(deadline) as watchdog:
        try:
            resp = session.request(method, url, headers=dict(headers or {}), stream=True, allow_redirects=allow_redirects,
                               timeout=(min(CONNECT_TIMEOUT_S, remaining), min(read_timeout_s, remaining)))
        except _NETWORK_ERRORS as exc:
            raise _failure(exc, url, watchdog) from exc
        try:
            conn = getattr(resp.raw, "connection", None)  # a session without a BoundedAdapter:
            if isinstance(conn, HTTPConnection):  # the body at least is bounded
                watchdog.watch(conn)
            if watchdog.expired:
                raise FetchTimeout(url)
            yield BoundedResponse(resp, url, watchdog)
        finally:
            watchdog.disarm()  # before the connection goes back to the pool
            resp.close()
