"""Image fetcher and robots.txt cache against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest
from fixtures.testsite import Response, SiteServer, image, make_image

from common.core.settings import ScrapeSettings  # noqa: E402
from worker_scrape.errors import FetchError, OffSiteRedirect  # noqa: E402
from worker_scrape.fetcher import Fetcher  # noqa: E402
from worker_scrape.robots import RobotsCache  # noqa: E402
from worker_scrape.throttle import HostThrottle  # noqa: E402

UA = "synthpipe-test/1.0"


@pytest.fixture()
def server():
    with SiteServer() as srv:
        yield srv


def _fetcher(**kw) -> Fetcher:
    return Fetcher(ScrapeSettings(user_agent=UA, **{"download_timeout_s": 2.0, **kw}))


def _reason(fetcher: Fetcher, url: str, **kw) -> str:
    """``code: message`` of the error fetching ``url`` raises."""
    with pytest.raises(FetchError) as info:
        fetcher.fetch_image(url, **kw)
    return f"{info.value.code}: {info.value}"


def test_fetch_ok_and_failures(server: SiteServer) -> None:
    png = make_image()
    r = server.routes
    r["/ok.png"] = Response(200, png, "image/png; charset=binary")
    r["/page.jpg"] = Response(200, b"<html></html>", "text/html")
    r["/none"] = Response(200, b"xx", "")
    r["/err"] = Response(503, b"busy")
    r["/big-declared.png"] = Response(200, make_image(size=(200, 200), noise=True), "image/png")
    r["/big-chunked.png"] = Response(
        200, make_image(size=(200, 200), noise=True), "image/png", chunked=True
    )
    r["/slow.png"] = Response(200, png, "image/png", delay_s=1.0)
    r["/loop"] = Response(302, headers={"Location": "/loop2"})
    r["/loop2"] = Response(302, headers={"Location": "/loop"})
    r["/hop"] = Response(307, headers={"Location": "ok.png"})
    r["/away"] = Response(302, headers={"Location": server.url("/ok.png", "localhost")})
    f = _fetcher(max_image_bytes=50_000)
    got = f.fetch_image(server.url("/ok.png"))
    assert (got.data, got.content_type) == (png, "image/png")
    assert f.fetch_image(server.url("/hop")).final_url == server.url("/ok.png")
    assert _reason(f, server.url("/missing.png")) == "fetch.http_status: HTTP 404"
    assert _reason(f, server.url("/err")) == "fetch.http_status: HTTP 503"
    assert _reason(f, server.url("/page.jpg")) == "fetch.not_an_image: not an image: text/html"
    assert _reason(f, server.url("/none")).startswith("fetch.not_an_image: not an image")
    assert _reason(f, server.url("/big-declared.png")).startswith("fetch.too_large: too large")
    assert _reason(f, server.url("/big-chunked.png")).startswith("fetch.too_large: too large")
    assert _reason(f, server.url("/loop")) == "fetch.too_many_redirects: too many redirects"
    with pytest.raises(OffSiteRedirect) as info:
        f.fetch_image(server.url("/away"))
    assert info.value.reason == f"redirect off-site to host localhost:{server.port}"
    assert server.paths().count("/ok.png") == 2  # the off-site target was never requested
    allowed = f.fetch_image(
        server.url("/away"), allowed_hosts=frozenset({f"localhost:{server.port}"})
    )
    assert allowed.data == png
    assert _reason(_fetcher(download_timeout_s=0.3), server.url("/slow.png")) == "fetch.timeout: timeout"
    assert {r.user_agent for r in server.log} == {UA}


def test_connection_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    reason = _reason(_fetcher(), f"http://127.0.0.1:{port}/x.png")
    assert reason.startswith("fetch.connection: connection error: ")


def test_fetcher_checks_robots_on_redirect_hops(server: SiteServer) -> None:
    server.routes["/robots.txt"] = Response(
        200, b"User-agent: *\nDisallow: /private/\n", "text/plain"
    )
    server.routes["/public.png"] = Response(302, headers={"Location": "/private/x.png"})
    server.routes["/private/x.png"] = image()
    robots = RobotsCache(UA)
    f = Fetcher(ScrapeSettings(user_agent=UA), robots=robots)
    assert _reason(f, server.url("/public.png")).startswith("robots.disallowed: redirect blocked by robots.txt")
    assert "/private/x.png" not in server.paths()


def test_robots_cache_semantics(server: SiteServer) -> None:
    server.routes["/robots.txt"] = Response(
        200,
        b"User-agent: other-bot\nDisallow: /\n\n"
        b"User-agent: synthpipe-test\nDisallow: /no/\nCrawl-delay: 2\n",
        "text/plain",
    )
    robots = RobotsCache(UA)
    assert robots.allowed(server.url("/yes/page"))
    assert not robots.allowed(server.url("/no/page"))
    assert robots.crawl_delay(server.url("/")) == 2.0
    assert server.paths().count("/robots.txt") == 1  # fetched once, then cached


@pytest.mark.parametrize(
    ("status", "policy", "allowed"),
    [
        (404, "deny", True),
        (410, "deny", True),
        (403, "allow", False),
        (401, "deny", False),
        (500, "deny", False),
        (503, "allow", True),
    ],
)
def test_robots_status_outcomes(
    server: SiteServer, status: int, policy: str, allowed: bool
) -> None:
    server.routes["/robots.txt"] = Response(status, b"User-agent: *\nDisallow:\n", "text/plain")
    robots = RobotsCache(UA, on_unreachable=policy)  # type: ignore[arg-type]
    assert robots.allowed(server.url("/page")) is allowed


def test_robots_unreachable_host_is_denied_by_default() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert not RobotsCache(UA, timeout_s=2).allowed(f"http://127.0.0.1:{port}/x")
    assert RobotsCache(UA, timeout_s=2, on_unreachable="allow").allowed(
        f"http://127.0.0.1:{port}/x"
    )


def test_fetcher_and_robots_share_the_host_delay(server: SiteServer) -> None:
    server.routes["/robots.txt"] = Response(200, b"User-agent: *\nAllow: /\n", "text/plain")
    for i in range(3):
        server.routes[f"/{i}.png"] = image()
    throttle = HostThrottle()
    robots = RobotsCache(UA, throttle=throttle)
    f = Fetcher(ScrapeSettings(user_agent=UA), throttle=throttle, robots=robots)
    assert robots.allowed(server.url("/0.png"), delay_s=0.15)
    for i in range(3):
        f.fetch_image(server.url(f"/{i}.png"), delay_s=0.15)
    times = [r.t for r in server.log]
    assert len(times) == 4
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.15 - 0.005
