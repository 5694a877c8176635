"""End-to-end crawler tests: real headless Chromium against generated sites on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from fixtures.net import free_port  # a free port is a closed one: nothing listens
from fixtures.testsite import Response, SiteServer, image, make_image, page

from common.core.settings import ScrapeSettings  # noqa: E402
from worker_scrape.sites import parse_sites  # noqa: E402
from worker_scrape.urls import TrapLimits  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (shutil.which("chromium") or Path("/usr/bin/chromium").exists())
        or not Path("/usr/bin/chromedriver").exists(),
        reason="needs /usr/bin/chromium and /usr/bin/chromedriver",
    ),
]

DELAY = 0.2
UA = "synthpipe-test-crawler/1.0"
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
LATE_SCRIPT = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const i = document.createElement('img'); i.src = '/img/late.png';
  document.getElementById('late').appendChild(i);
}, 20));
</script>"""
LAZY_SCRIPT = """<script>
const io = new IntersectionObserver((es) => es.forEach(e => {
  if (e.isIntersecting) { e.target.src = e.target.dataset.src; io.unobserve(e.target); }
}));
document.querySelectorAll('img.lazy').forEach(i => io.observe(i));
</script>"""


class Registry:
    """Test ``on_image``: hashes bytes; the second copy of the same bytes is a duplicate."""

    def __init__(self) -> None:
        self.by_hash: dict[str, str] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.hook = None

    def __call__(self, cand) -> str:
        self.calls.append((cand.image_url, cand.page_url, cand.role))
        if self.hook:
            self.hook(cand)
        digest = hashlib.sha256(cand.data).hexdigest()
        if digest in self.by_hash:
            return "duplicate"
        self.by_hash[digest] = cand.image_url
        return "registered"


def build_shop(main: SiteServer, other: SiteServer) -> None:
    r = main.routes
    r["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
    r["/"] = page(f"""
      <a href="/products/">products</a> <a href="/lookbook/">lookbook</a>
      <a href="/private/secret.html">secret</a> <a href="/account/settings">account</a>
      <a href="/calendar?page=1">calendar</a> <a href="/a/">a</a> <a href="/deep/1">deep</a>
      <a href="/missing-page">missing</a> <a href="/go-away">away</a>
      <a href="{other.url("/offsite.html", "localhost")}">other site</a>
      <a href="mailto:x@example.invalid">mail</a> <a href="javascript:void(0)">js</a>
      <a href="/products/#top">same page</a> <a rel="nofollow" href="/nofollow-page">nf</a>
      <img src="/img/plain.png"> <img src="/private/hidden.png">""")
    r["/products/"] = page(f"""
      <img class="lazy" src="{PLACEHOLDER}" data-src="/img/lazy1.jpg">
      <img src="/img/placeholder.gif" data-original="/img/lazy2.jpg">
      <img src="/img/small.jpg" srcset="/img/s320.jpg 320w, /img/s1280.jpg 1280w,
           /img/s640.jpg 640w" sizes="50vw">
      <picture><source type="image/webp" srcset="/img/pic-800.webp 800w, /img/pic-1600.png 1600w">
        <img src="/img/pic-fallback.jpg"></picture>
      <div id="late"></div>
      <img src="/img/missing.png"> <img src="/img/fake.jpg"> <img src="/img/huge.png">
      <img src="/img/dup-a.png"> <img src="/img/dup-b.png">
      <img src="/img/redir.png"> <img src="/img/moved.png"> <img src="/img/plain.png">
      <a href="/products/?b=2&a=1">sorted</a> <a href="/products/?a=1&b=2#x">same</a>
      {LAZY_SCRIPT}{LATE_SCRIPT}""")
    r["/lookbook/"] = page(
        """
      <img src="/img/look-1x.jpg" srcset="/img/look-2x.jpg 2x, /img/look-3x.jpg 3x">
      <div style="background-image: url('/img/bg.jpg'); width: 300px; height: 400px"></div>
      <a href="/lookbook/model/page2">next</a>""",
        head='<meta property="og:image" content="/img/og.jpg">',
    )
    r["/lookbook/model/page2"] = page('<img src="/img/look-model.png">')
    r["/private/secret.html"] = page('<img src="/img/secret-img.png">')
    r["/account/settings"] = page("account")
    r["/nofollow-page"] = page("nf")
    r["/go-away"] = Response(
        302, b"", headers={"Location": other.url("/landing.html", "localhost")}
    )
    r["/calendar"] = lambda path: page(
        f'<a href="/calendar?page={int(path.split("=")[-1]) + 1}">next month</a>'
    )
    r["/img/plain.png"] = image()
    r["/private/hidden.png"] = image()
    for name in (
        "lazy1.jpg",
        "lazy2.jpg",
        "small.jpg",
        "s320.jpg",
        "s640.jpg",
        "s1280.jpg",
        "pic-fallback.jpg",
        "look-1x.jpg",
        "look-2x.jpg",
        "look-3x.jpg",
        "bg.jpg",
        "og.jpg",
    ):
        r[f"/img/{name}"] = image("JPEG")
    for name in ("late.png", "pic-1600.png", "look-model.png", "plain2.png", "secret-img.png"):
        r[f"/img/{name}"] = image()
    r["/img/pic-800.webp"] = image("WEBP")
    r["/img/fake.jpg"] = Response(200, b"<html><body>soft 404</body></html>", "text/html")
    r["/img/huge.png"] = Response(
        200, make_image(size=(300, 300), noise=True), "image/png", chunked=True
    )
    dup = make_image()
    r["/img/dup-a.png"] = Response(200, dup, "image/png")
    r["/img/dup-b.png"] = Response(200, dup, "image/png")
    r["/img/redir.png"] = Response(
        302, b"", headers={"Location": other.url("/img/target.png", "localhost")}
    )
    r["/img/moved.png"] = Response(301, b"", headers={"Location": "/img/plain2.png"})
    for i in range(1, 12):
        r[f"/deep/{i}"] = page(f'<a href="/deep/{i + 1}">deeper</a>')
    for n in range(1, 10):
        r["/a" * n + "/"] = page('<a href="a/">a</a>')
    o = other.routes
    o["/robots.txt"] = Response(404, b"")
    o["/img/target.png"] = image()
    o["/landing.html"] = page('<img src="/img/target.png">')
    o["/offsite.html"] = page("offsite")


SITE_YAML = """
categories:
  - name: retailer
    sites:
      - name: test-shop
        start_urls: ["{start}"]
        deny: ["^/account"]
        max_depth: 6
        max_pages: 60
        delay_s: {delay}
        roles:
          - {{role: person, match: "/model/|/look"}}
        default_role: garment
"""


@pytest.fixture(scope="module")
def shop_crawl():
    from worker_scrape.crawler import Crawler

    with SiteServer() as main, SiteServer() as other:
        build_shop(main, other)
        site_file = parse_sites(SITE_YAML.format(start=main.url("/"), delay=DELAY))
        category, site = site_file.site("test-shop")
        config = ScrapeSettings(
            user_agent=UA,
            max_image_bytes=100_000,
            settle_s=0.5,
            page_timeout_s=20,
            download_timeout_s=10,
        )
        registry = Registry()
        with Crawler(config, trap_limits=TrapLimits(max_query_variants=3, max_segment_repeats=3)) as crawler:
            report = crawler.crawl_site(site, category, on_image=registry)
        yield report, main, other, registry


def test_images_are_found_the_way_shop_pages_carry_them(shop_crawl):
    report, main, _other, registry = shop_crawl
    got = {url.rsplit("/", 1)[-1] for url, _page, _role in registry.calls}
    assert {
        "plain.png",
        "lazy1.jpg",
        "lazy2.jpg",
        "s1280.jpg",
        "pic-1600.png",
        "late.png",
        "look-3x.jpg",
        "bg.jpg",
        "og.jpg",
        "look-model.png",
        "dup-a.png",
        "dup-b.png",
        "moved.png",
    } <= got
    # the largest srcset candidate only; placeholders and fallbacks never fetched
    never = {
        "small.jpg",
        "s320.jpg",
        "s640.jpg",
        "pic-800.webp",
        "pic-fallback.jpg",
        "look-1x.jpg",
        "look-2x.jpg",
        "placeholder.gif",
    }
    assert not got & never
    requested = {p.rsplit("/", 1)[-1] for p in main.paths()}
    assert not requested & never, "the browser or the fetcher requested a non-chosen image"
    assert main.paths().count("/img/plain.png") == 1  # once per crawl, though on two pages
    roles = {url.rsplit("/", 1)[-1]: role for url, _p, role in registry.calls}
    assert roles["look-3x.jpg"] == "person" and roles["look-model.png"] == "person"
    assert roles["plain.png"] == "garment"


def test_failures_duplicates_and_statuses_are_reported(shop_crawl):
    report, main, other, _registry = shop_crawl
    reasons = {f.url.rsplit("/", 1)[-1]: (f.code, f.message) for f in report.images_failed}
    assert reasons["missing.png"] == ("fetch.http_status", "HTTP 404")
    assert reasons["fake.jpg"] == ("fetch.not_an_image", "not an image: text/html")
    assert reasons["huge.png"][0] == "fetch.too_large" and reasons["huge.png"][1].startswith("too large")
    assert reasons["redir.png"] == ("fetch.offsite_redirect", f"redirect off-site to host localhost:{other.port}")
    codes = report.failures_by_code()
    assert (codes["fetch.http_status"], codes["page.http_status"]) == (1, 1)  # missing.png, /missing-page
    assert "/img/target.png" not in other.paths()
    assert "/landing.html" not in other.paths(), "the browser followed an off-site redirect"
    assert report.blocked_by_type.get("Document", 0) >= 1
    assert report.images_by_status == {"registered": report.images_downloaded - 1, "duplicate": 1}
    assert any(r.kind == "image" and "localhost" in r.to for r in report.off_site_redirects)
    assert any(
        r.kind == "page" and r.to.endswith("/landing.html") for r in report.off_site_redirects
    )
    assert {(f.code, f.message) for f in report.pages_failed} == {("page.http_status", "HTTP 404")}
    assert "/img/plain2.png" in main.paths()  # same-site redirect followed
    import json

    json.dumps(report.model_dump(mode="json"))


def test_robots_txt_is_honoured_for_pages_and_images(shop_crawl):
    report, main, _other, _registry = shop_crawl
    assert not [p for p in main.paths() if p.startswith("/private/")]
    blocked = {u.split(str(main.port), 1)[1] for u in report.robots_blocked}
    assert {"/private/secret.html", "/private/hidden.png"} <= blocked
    assert main.paths().count("/robots.txt") == 1
    assert {r.user_agent for r in main.log} == {UA}


def test_link_traps_deny_and_depth_are_bounded(shop_crawl):
    report, main, _other, _registry = shop_crawl
    paths = main.paths()
    assert [p for p in paths if p.startswith("/calendar")] == [
        f"/calendar?page={i}" for i in (1, 2, 3)
    ]
    assert max(p.count("a/") for p in paths if p.startswith("/a/")) == 3
    assert not [p for p in paths if p.startswith("/account") or p == "/nofollow-page"]
    deep = sorted(int(p.rsplit("/", 1)[1]) for p in paths if p.startswith("/deep/"))
    assert deep == [1, 2, 3, 4, 5, 6]  # depth 1..6 from the start page
    assert report.links_skipped["too many query variants"] >= 1
    assert report.links_skipped["repeated path segment"] >= 1
    assert report.links_skipped["allow/deny"] >= 1
    assert paths.count("/products/") == 1 and "/products/?a=1&b=2" in paths


def test_per_host_delay_holds_for_pages_images_and_robots(shop_crawl):
    _report, main, _other, _registry = shop_crawl
    times = [r.t for r in main.log]
    assert len(times) > 30
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= DELAY - 0.005, f"requests {min(gaps):.3f}s apart"


def _kill_browser(crawler, what: str) -> None:
    pgid = crawler.browser.driver_pid
    if what == "all":
        os.killpg(pgid, signal.SIGKILL)
        return
    profile = crawler.browser._profile
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if profile and profile.encode() in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.parametrize("what", ["all", "chromium"])
def test_browser_crash_mid_batch_restarts_and_goes_on(what):
    from worker_scrape.crawler import Crawler

    with SiteServer() as server:
        links = "".join(f'<a href="/p{i}">p{i}</a>' for i in range(1, 5))
        server.routes["/"] = page(links + '<img src="/img/0.png">')
        for i in range(5):
            server.routes[f"/p{i}"] = page(f'<img src="/img/{i}.png">')
            server.routes[f"/img/{i}.png"] = image()
        site_file = parse_sites(SITE_YAML.format(start=server.url("/"), delay=0))
        category, site = site_file.site("test-shop")
        registry = Registry()
        with Crawler(ScrapeSettings(user_agent=UA, settle_s=0.05)) as crawler:
            killed = []

            def kill_once(cand) -> None:
                if not killed:
                    killed.append(cand.image_url)
                    _kill_browser(crawler, what)

            registry.hook = kill_once
            report = crawler.crawl_site(site, category, on_image=registry)
            assert report.browser_restarts == 1
            assert crawler.browser.alive()
        assert report.pages_failed == []
        assert len(report.pages_visited) == 5
        assert report.images_by_status == {"registered": 5}


def test_page_timeout_fails_the_page_not_the_crawl():
    from worker_scrape.crawler import Crawler

    with SiteServer() as server:
        server.routes["/"] = page('<a href="/slow">slow</a> <a href="/fine">fine</a>')
        # The timeout applies to every page, including the first load in a fresh Chromium: it
        # must be generous enough for a loaded machine, and the slow page far slower still.
        server.routes["/slow"] = Response(200, b"<html>late</html>", delay_s=15)
        server.routes["/fine"] = page('<img src="/img/f.png">')
        server.routes["/img/f.png"] = image()
        site_file = parse_sites(SITE_YAML.format(start=server.url("/"), delay=0))
        category, site = site_file.site("test-shop")
        registry = Registry()
        config = ScrapeSettings(user_agent=UA, settle_s=0.05, page_timeout_s=5.0)
        with Crawler(config) as crawler:
            report = crawler.crawl_site(site, category, on_image=registry)
    assert [(f.url.rsplit("/", 1)[-1], f.code) for f in report.pages_failed] == [("slow", "page.timeout")]
    assert len(report.pages_visited) == 2 and report.images_by_status == {"registered": 1}
    assert report.browser_restarts == 0


def test_one_browser_for_a_batch_and_max_pages_override():
    from worker_scrape.crawler import Crawler

    with SiteServer() as one, SiteServer() as two:
        for srv in (one, two):
            srv.routes["/"] = page("".join(f'<a href="/p{i}">p</a>' for i in range(5)))
            for i in range(5):
                srv.routes[f"/p{i}"] = page(f'<img src="/img/{i}.png">')
                srv.routes[f"/img/{i}.png"] = image()
        second_site = SITE_YAML.split("sites:\n", 1)[1].replace("test-shop", "second")
        yaml_text = SITE_YAML.format(start=one.url("/"), delay=0) + second_site.format(
            start=two.url("/"), delay=0
        )
        site_file = parse_sites(yaml_text)
        items = [site_file.site("test-shop"), site_file.site("second")]
        registry = Registry()
        with Crawler(ScrapeSettings(user_agent=UA, settle_s=0.05)) as crawler:
            reports = crawler.crawl_batch(items, on_image=registry, max_pages=3)
            assert crawler.browser.starts == 1
        assert [len(r.pages_visited) for r in reports] == [3, 3]
        assert [r.stopped for r in reports] == ["max_pages", "max_pages"]
        assert [r.site for r in reports] == ["test-shop", "second"]
        assert len([p for p in one.paths() if p.startswith("/p")]) == 2


OPEN_BROWSER_AND_HANG = """
import sys, time
from worker_scrape.browser import Browser
from common.core.settings import ScrapeSettings
b = Browser(ScrapeSettings(user_agent="t", settle_s=0.05))
b.render(sys.argv[1])
print(b._profile, flush=True)
time.sleep(600)
"""


def _processes_naming(profile: str) -> list[int]:
    pids = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            if f"--user-data-dir={profile}".encode() in fh.read():
                pids.append(int(pid))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reaping reads /proc (Linux)")
def test_a_killed_workers_browser_is_reaped_by_the_next_one(tmp_path: Path) -> None:
    """SIGKILL gives a worker no chance to quit Chromium; the next browser start kills the orphan."""
    import subprocess
    import time

    from worker_scrape.browser import reap_orphaned_browsers

    with SiteServer() as server:
        server.routes["/"] = page("hello")
        env = {**os.environ, "TMPDIR": str(tmp_path), "SE_OFFLINE": "true"}
        worker = subprocess.Popen([sys.executable, "-c", OPEN_BROWSER_AND_HANG, server.url("/")], env=env,
                                  stdout=subprocess.PIPE, text=True)
        assert worker.stdout is not None
        profile = worker.stdout.readline().strip()
        assert profile.startswith(str(tmp_path)) and f"-{worker.pid}-" in profile
        worker.kill()
        worker.wait()
    assert _processes_naming(profile), "Chromium should have outlived its SIGKILLed owner"
    alive_profile = tmp_path / f"synthpipe-chromium-{os.getpid()}-live"  # a live owner's profile stays
    alive_profile.mkdir()
    assert reap_orphaned_browsers(str(tmp_path)) == 1
    deadline = time.monotonic() + 10
    while _processes_naming(profile) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_naming(profile) == []
    assert not Path(profile).exists() and alive_profile.exists()
    assert reap_orphaned_browsers(str(tmp_path)) == 0


def test_a_profile_whose_owner_holds_its_lock_is_never_reaped(tmp_path: Path) -> None:
    """Containers sharing /tmp see each other's profiles but not each other's pids: the owner
    lock, not the pid in the name, decides whether a browser is orphaned."""
    from worker_scrape.browser import OWNER_FILE, _hold_owner_lock, reap_orphaned_browsers

    foreign = tmp_path / "synthpipe-chromium-999999999-x"  # a pid this namespace does not have
    foreign.mkdir()
    fd = _hold_owner_lock(str(foreign))
    try:
        assert (foreign / OWNER_FILE).exists()
        assert reap_orphaned_browsers(str(tmp_path)) == 0 and foreign.exists()
    finally:
        os.close(fd)
    assert reap_orphaned_browsers(str(tmp_path)) == 1 and not foreign.exists()  # lock gone: orphan


def test_unreachable_hosts_are_failures_with_a_reason_not_robots_blocks() -> None:
    """A host that does not answer at all is a failed page or image with the reason, whether it
    is a start URL or an image host; robots_blocked stays for real rules."""
    from worker_scrape.crawler import Crawler

    dead = f"http://127.0.0.1:{free_port()}"
    with SiteServer() as server:
        server.routes["/"] = page(f'<img src="{dead}/img/x.jpg"><img src="/img/ok.png">')
        server.routes["/img/ok.png"] = image()
        yaml_text = SITE_YAML.format(start=server.url("/"), delay=0).replace(
            f'["{server.url("/")}"]', f'["{server.url("/")}", "{dead}/"]')
        category, site = parse_sites(yaml_text).site("test-shop")
        registry = Registry()
        with Crawler(ScrapeSettings(user_agent=UA, settle_s=0.05, download_timeout_s=5)) as crawler:
            report = crawler.crawl_site(site, category, on_image=registry)
    pages = {f.url: (f.code, f.message) for f in report.pages_failed}
    assert pages[f"{dead}/"] == ("host.unreachable", "host unreachable: connection refused")
    assert [(f.url, f.code, f.message) for f in report.images_failed] == [
        (f"{dead}/img/x.jpg", "host.unreachable", "host unreachable: connection refused")]
    assert report.robots_blocked == []
    assert report.images_by_status == {"registered": 1}


def test_connection_failures_get_short_reasons() -> None:
    import requests

    from worker_scrape.reader import connection_failure

    dns = requests.ConnectionError("HTTPConnectionPool(host='shop.example'): Max retries exceeded "
                                   "(Caused by NameResolutionError(\"Failed to resolve 'shop.example'\"))")
    assert connection_failure(dns) == "DNS lookup failed"
    assert connection_failure(requests.ConnectTimeout("slow")) == "timeout"
    assert connection_failure(requests.ConnectionError("[Errno 111] Connection refused")) == "connection refused"
    assert connection_failure(requests.ConnectionError("reset")) == "ConnectionError"
