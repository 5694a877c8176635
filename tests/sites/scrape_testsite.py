"""Test helpers for the scrape tests: a threaded HTTP server on 127.0.0.1 with its own
request log, and generated images (all different, valid PNG/JPEG)."""

from __future__ import annotations

import contextlib
import http.server
import io
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from PIL import Image


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (timeouts)
    chunked: bool = False  # no Content-Length, body streamed in chunks


@dataclass(frozen=True)
class LoggedRequest:
    t: float  # time.monotonic() when the request line was read
    method: str
    path: str  # path + query, as sent
    host: str
    user_agent: str


Route = Response | Callable[[str], Response]


class _QuietServer(http.server.ThreadingHTTPServer):
    """Clients that hang up early (timeouts, size limits) are expected here: no tracebacks."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class SiteServer:
    """Serves ``routes`` (keyed by path, or path?query) on 127.0.0.1 and logs every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                t = time.monotonic()
                with server._lock:
                    server.log.append(
                        LoggedRequest(
                            t,
                            "GET",
                            self.path,
                            self.headers.get("Host", ""),
                            self.headers.get("User-Agent", ""),
                        )
                    )
                resp = server.resolve(self.path)
                if resp.delay_s:
                    time.sleep(resp.delay_s)
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if resp.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for i in range(0, len(resp.body), 16384):
                            chunk = resp.body[i : i + 16384]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(resp.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuietServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def resolve(self, path: str) -> Response:
        route = self.routes.get(path)
        if route is None:
            route = self.routes.get(urlsplit(path).path)
        if route is None:
            return Response(404, b"<html><body>not found</body></html>")
        return route(path) if callable(route) else route

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def times(self, prefix: str = "") -> list[float]:
        """When each request (whose path starts with ``prefix``) arrived, in order."""
        with self._lock:
            return [r.t for r in self.log if r.path.startswith(prefix)]

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.log]

    def __enter__(self) -> SiteServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page(body: str, title: str = "page", head: str = "") -> Response:
    html = (
        f"<!doctype html><html><head><title>{title}</title>{head}</head><body>{body}</body></html>"
    )
    return Response(200, html.encode())


_counter = iter(range(1, 1_000_000))


def make_image(fmt: str = "PNG", size: tuple[int, int] = (48, 40), noise: bool = False) -> bytes:
    """A small valid image, different every call (colour and pattern from a counter)."""
    n = next(_counter)
    rng = random.Random(n)
    if noise:
        img = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    else:
        img = Image.new("RGB", size, (n * 37 % 256, n * 91 % 256, n * 53 % 256))
        for _ in range(6):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            img.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def image(fmt: str = "PNG", **kw: object) -> Response:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return Response(200, make_image(fmt, **kw), content_type=mime)  # type: ignore[arg-type]
