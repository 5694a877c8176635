"""The crawler against sites that misbehave, served on loopback addresses: malformed sitemaps,
servers that trickle a byte at a time or break off mid-body, rules that backtrack, site files
that expand exponentially, images on other hosts. Each is refused or cut short with a reason
code, and the crawl goes on."""

from __future__ import annotations

import base64
import http.server
import json
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from common.core.settings import ScrapeSettings
from worker_scrape.errors import FetchError, SiteError
from worker_scrape.fetcher import Fetcher
from worker_scrape.robots import RobotsCache
from worker_scrape.sitemaps import parse_sitemap, read_sitemaps
from worker_scrape.sites import parse_sites
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import TrapLimits

UA = "synthpipe-hostile-test/1.0"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
TRICKLE_S = 0.2  # seconds between the bytes of a trickling answer
TRICKLE_BYTES = 40  # so a trickling answer would take 8 s in all
needs_browser = [
    pytest.mark.browser,
    pytest.mark.skipif(not (shutil.which("chromium") or Path("/usr/bin/chromium").exists())
                       or not Path("/usr/bin/chromedriver").exists(),
                       reason="needs /usr/bin/chromium and /usr/bin/chromedriver"),
]

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def answer(status: int, body: bytes = b"", ctype: str = "text/html") -> Handler:
    def send(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return send


def trickle(ctype: str = "text/plain") -> Handler:
    """Headers at once, then one byte every TRICKLE_S: no single read ever times out."""
    def send(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(TRICKLE_BYTES))
        h.end_headers()
        for _ in range(TRICKLE_BYTES):
            h.wfile.write(b"#")
            h.wfile.flush()
            time.sleep(TRICKLE_S)
    return send


def trickle_headers(h: http.server.BaseHTTPRequestHandler) -> None:
    """The status line at once, then a header one byte every TRICKLE_S."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(TRICKLE_BYTES):
        h.wfile.write(b"z")
        h.wfile.flush()
        time.sleep(TRICKLE_S)
    h.close_connection = True


def broken_off(h: http.server.BaseHTTPRequestHandler) -> None:
    """Promises 100 bytes, sends 10 and closes: urllib3 raises while the body streams."""
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", "100")
    h.end_headers()
    h.wfile.write(b"User-agent")
    h.wfile.flush()
    h.close_connection = True


def stalled(h: http.server.BaseHTTPRequestHandler) -> None:
    """Headers, a few bytes, then silence longer than the read timeout."""
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", "100")
    h.end_headers()
    h.wfile.write(b"User-agent")
    h.wfile.flush()
    time.sleep(2.0)


def page(body: str) -> Handler:
    return answer(200, f"<!doctype html><html><body>{body}</body></html>".encode())


class Site:
    """A loopback HTTP server: ``routes`` maps a path to a handler; ``paths`` logs every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Handler] = {}
        self.paths: list[str] = []
        site = self

        class Request(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                site.paths.append(self.path)
                try:
                    site.routes.get(path, answer(404, b"not found"))(self)
                except OSError:  # the client went away (a deadline cut it off)
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Request)
        self.server.daemon_threads = True
        self.host = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}{path}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def site() -> Iterator[Site]:
    with Site() as s:
        yield s


def _site_yaml(start: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        categories:
          - name: shops
            sites:
              - name: hostile-shop
                start_urls: ["{start}"]
                max_depth: 2
                max_pages: 10
                delay_s: 0
                default_role: garment
                licence: CC-BY-4.0
        """) + extra


def _crawl(start: str, extra: str = "", trap_limits: TrapLimits | None = None, **settings: object):  # type: ignore[no-untyped-def]
    from worker_scrape.crawler import Crawler

    category, site = parse_sites(_site_yaml(start, extra)).site("hostile-shop")
    registered: list[tuple[str, str | None]] = []

    def on_image(candidate):  # type: ignore[no-untyped-def]
        registered.append((candidate.image_url, candidate.licence))
        return "registered"

    config = ScrapeSettings(user_agent=UA, settle_s=0.05, scroll_steps=0, page_timeout_s=20, **settings)
    with Crawler(config, trap_limits=trap_limits) as crawler:
        report = crawler.crawl_batch([(category, site)], on_image=on_image)[0]
    assert not isinstance(report, BaseException), repr(report)
    return report, registered


def _isolated(code: str, timeout_s: float = 30.0) -> dict[str, object]:
    """Run ``code`` (which prints one JSON line) in a child process with 2 GiB of address space:
    a hang or a memory blow-up fails the test instead of freezing the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout_s, preexec_fn=limit, cwd=Path(__file__).parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {timeout_s} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- 1. malformed sitemaps --------------------------------------------------------------------

GOOD = "<url><loc>/p/1</loc></url><url><loc>/p/2</loc></url>"
URLSET = '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                    for i in range(1, 10))
          + f"]>{URLSET}<url><loc>/&lol9;</loc></url></urlset>")
MALFORMED = {
    "html_not_found": (b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Not found</title></head>"
                       b"<body><p>Sorry, no such page<br></p></body></html>", 0, "sitemap.malformed"),
    "mismatched_tag": (f"{URLSET}{GOOD}<url><loc>/p/3</loc></uri></urlset>".encode(), 2, "sitemap.malformed"),
    "nbsp": (f"{URLSET}{GOOD}<url><loc>/p/3&nbsp;</loc></url></urlset>".encode(), 2, "sitemap.malformed"),
    "billion_laughs": (LAUGHS.encode(), 0, "sitemap.malformed"),
    "xhtml_page": (b"<html><body><p>Not found</p></body></html>", 0, "sitemap.malformed"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_sitemap_gives_what_came_before_and_a_reason_code(site: Site, name: str) -> None:
    body, kept, code = MALFORMED[name]
    site.routes["/sitemap.xml"] = answer(200, body, "text/html")
    children, entries = parse_sitemap(body, site.url("/sitemap.xml"))
    assert children == [] and [e.page_url for e in entries] == [site.url(f"/p/{i}") for i in range(1, kept + 1)]
    result = read_sitemaps([site.url("/sitemap.xml")], session=requests.Session(), throttle=HostThrottle(),
                           delay_for=lambda _u: 0.0, allowed=lambda _u: True, max_files=3, max_bytes=100_000,
                           max_urls=50, timeout_s=5)
    assert [e.page_url for e in result.entries] == [site.url(f"/p/{i}") for i in range(1, kept + 1)]
    assert result.failures == {site.url("/sitemap.xml"): code}
    assert result.files_read == [site.url("/sitemap.xml")]


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser)])
def test_crawl_with_an_html_sitemap_goes_on_from_its_start_urls_and_links(site: Site, _: None) -> None:
    site.routes["/robots.txt"] = answer(404)
    site.routes["/sitemap.xml"] = answer(200, MALFORMED["html_not_found"][0], "text/html")
    site.routes["/"] = page('<a href="/next">next</a><img src="/img/a.png">')
    site.routes["/next"] = page("the next page")
    site.routes["/img/a.png"] = answer(200, PNG, "image/png")
    report, registered = _crawl(site.url("/"))
    assert report.pages_visited == [site.url("/"), site.url("/next")]
    assert report.sitemap.failures == {site.url("/sitemap.xml"): "sitemap.malformed"}
    assert registered == [(site.url("/img/a.png"), "CC-BY-4.0")]


# --- 2. a total deadline on every crawler fetch ------------------------------------------------

@pytest.mark.parametrize("handler", [trickle(), trickle_headers], ids=["body", "headers"])
def test_trickling_robots_txt_is_cut_at_the_deadline_and_the_host_not_crawled(site: Site, handler: Handler) -> None:
    site.routes["/robots.txt"] = handler
    robots = RobotsCache(UA, timeout_s=5.0, deadline_s=1.0)
    t0 = time.monotonic()
    entry = robots.entry(site.url("/"))
    assert (entry.status, entry.why) == ("unreachable", "timeout")
    assert time.monotonic() - t0 < TRICKLE_BYTES * TRICKLE_S / 2  # cut long before the server is done
    assert not robots.allowed(site.url("/page"))


def test_trickling_sitemap_and_image_are_cut_at_the_deadline(site: Site) -> None:
    site.routes["/sitemap.xml"] = trickle("application/xml")
    site.routes["/img/slow.png"] = trickle("image/png")
    t0 = time.monotonic()
    result = read_sitemaps([site.url("/sitemap.xml")], session=requests.Session(), throttle=HostThrottle(),
                           delay_for=lambda _u: 0.0, allowed=lambda _u: True, max_files=3, max_bytes=100_000,
                           max_urls=50, timeout_s=5, deadline_s=1.0)
    assert result.failures == {site.url("/sitemap.xml"): "fetch.timeout"} and result.entries == []
    fetcher = Fetcher(ScrapeSettings(user_agent=UA, download_timeout_s=5.0, fetch_deadline_s=1.0))
    with pytest.raises(FetchError) as info:
        fetcher.fetch_image(site.url("/img/slow.png"))
    assert (info.value.code, str(info.value)) == ("fetch.timeout", "timeout")
    assert time.monotonic() - t0 < TRICKLE_BYTES * TRICKLE_S / 2


@pytest.mark.parametrize(("handler", "why"), [(broken_off, "connection broken off"), (stalled, "timeout")],
                         ids=["broken_off_mid_body", "read_timeout_mid_body"])
def test_urllib3_errors_while_streaming_robots_txt_mean_unreachable(site: Site, handler: Handler,
                                                                     why: str) -> None:
    site.routes["/robots.txt"] = handler
    robots = RobotsCache(UA, timeout_s=0.5)
    entry = robots.entry(site.url("/"))
    assert (entry.status, entry.why) == ("unreachable", why)
    assert not robots.allowed(site.url("/page"))


# --- 3. rules in linear time -------------------------------------------------------------------

def test_site_rules_match_a_backtracking_pattern_in_linear_time() -> None:
    out = _isolated("""
        import json
        from worker_scrape.sites import parse_sites
        from worker_scrape.urls import path_allowed
        text = '''categories:
          - name: c
            sites:
              - name: s
                start_urls: ["http://127.0.0.1/"]
                deny: ["(a+)+$"]
                roles: [{role: person, match: "(x+x+)+y"}]
        '''
        site = parse_sites(text).site("s")[1]
        hostile = "http://127.0.0.1/" + "a" * 40 + "!"
        print(json.dumps({"allowed": path_allowed(hostile, site.allow_re, site.deny_re),
                          "denied": path_allowed("http://127.0.0.1/aaa", site.allow_re, site.deny_re),
                          "role": site.role_for("http://127.0.0.1/" + "x" * 40, "http://127.0.0.1/")}))
    """, timeout_s=20)
    assert out == {"allowed": True, "denied": False, "role": None}


@pytest.mark.parametrize(("pattern", "key"), [(r"(a)\\1", "deny[0]"), ("(?=/shop)", "allow[0]"),
                                              ("(?<!x)y", "roles[0].match")])
def test_a_rule_re2_cannot_run_is_refused_at_load_naming_site_key_and_pattern(pattern: str, key: str) -> None:
    field = key.split("[")[0]
    value = f'[{{role: person, match: "{pattern}"}}]' if field == "roles" else f'["{pattern}"]'
    text = _site_yaml("http://127.0.0.1/", "").replace("default_role: garment",
                                                       f"default_role: garment\n        {field}: {value}")
    with pytest.raises(SiteError) as info:
        parse_sites(text, "sites.yaml")
    message = str(info.value)
    shown = pattern.replace("\\\\", "\\")
    assert message.startswith("sites.yaml:") and f"sites[0].{key}" in message
    assert repr(shown) in message and "'hostile-shop'" in message


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser)])
def test_sitemap_urls_meet_the_trap_guard_before_the_rules(site: Site, _: None) -> None:
    deep = "/a" * 30  # too deep for the trap guard, and denied by the rule
    site.routes["/robots.txt"] = answer(404)
    site.routes["/sitemap.xml"] = answer(200, f"{URLSET}<url><loc>{deep}</loc></url>"
                                         f"<url><loc>/p/1</loc></url></urlset>".encode(), "application/xml")
    site.routes["/"] = page("home")
    site.routes["/p/1"] = page("product")
    report, _registered = _crawl(site.url("/"), '        deny: ["^/a/"]\n', trap_limits=TrapLimits(max_path_depth=12))
    assert report.sitemap.entries_skipped == {"path too deep": 1}
    assert report.pages_visited == [site.url("/"), site.url("/p/1")]
    assert "/a/a" not in "".join(site.paths)


# --- 4. site files that expand exponentially ---------------------------------------------------

BILLION_LAUGHS_YAML = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
categories: [*h]
"""


def test_site_file_aliases_are_refused_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS_YAML)
    assert path.stat().st_size < 500
    out = _isolated(f"""
        import json
        from worker_scrape.errors import SiteError
        from worker_scrape.sites import load_sites
        try:
            load_sites({str(path)!r})
            print(json.dumps({{"loaded": True}}))
        except SiteError as exc:
            print(json.dumps({{"code": exc.code, "message": str(exc)}}))
    """)
    assert out["code"] == "sites.yaml_alias"
    assert str(out["message"]).startswith(f"{path}:2:")
    assert "aliases are not allowed" in str(out["message"])


# --- 5. images on other hosts -----------------------------------------------------------------

@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_browser)])
def test_offsite_images_are_counted_as_blocked_and_never_requested(site: Site, _: None) -> None:
    with Site("127.0.0.2") as tracker:
        tracker.routes["/robots.txt"] = answer(404)
        tracker.routes["/pixel.png"] = answer(200, PNG, "image/png")
        site.routes["/robots.txt"] = answer(404)
        site.routes["/"] = page(f'<img src="{tracker.url("/pixel.png")}"><img src="/img/own.png">')
        site.routes["/img/own.png"] = answer(200, PNG, "image/png")
        report, registered = _crawl(site.url("/"), sitemaps=False)
        assert tracker.paths == []
    assert registered == [(site.url("/img/own.png"), "CC-BY-4.0")]
    assert report.images_blocked == {"image.offsite": 1}
    assert report.summary()["images_blocked"] == {"image.offsite": 1}
    assert report.images_found == 2 and report.images_failed == []
