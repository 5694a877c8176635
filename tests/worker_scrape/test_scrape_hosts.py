"""Crawling as shops need it, with real headless Chromium against sites on several loopback
addresses (127.0.0.2, 127.0.0.3, ...): several sites at once, each by its own robots.txt and
delay (checked in each server's own request log), pages found only through sitemaps, requests to
other hosts blocked inside the browser, a SIGKILLed crawl resumed, a missing browser."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.testsite import Response, SiteServer, image, page

from common.core.settings import ScrapeSettings  # noqa: E402
from worker_scrape.sites import parse_sites  # noqa: E402

pytestmark = pytest.mark.browser

UA = "synthpipe-test-crawler/1.0"
SLACK = 0.005  # the server's clock reads a little after the request was sent


class Registry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, cand):  # type: ignore[no-untyped-def]
        self.calls.append((cand.image_url, cand.page_url, cand.found_via))
        return "registered"


def _site(name: str, start: str, delay: float, extra: str = "") -> str:
    return f"""
      - name: {name}
        start_urls: ["{start}"]
        max_depth: 3
        max_pages: 30
        delay_s: {delay}
        default_role: garment
{extra}"""


def _crawl(yaml_sites: str, **settings: object):  # type: ignore[no-untyped-def]
    from worker_scrape.crawler import Crawler

    site_file = parse_sites("categories:\n  - name: shops\n    sites:" + yaml_sites)
    items = [(cat, site) for cat, site in site_file.iter_sites()]
    registry = Registry()
    config = ScrapeSettings(user_agent=UA, settle_s=0.05, scroll_steps=0, page_timeout_s=20, **settings)
    with Crawler(config) as crawler:
        reports = crawler.crawl_batch(items, on_image=registry)
    for r in reports:
        assert not isinstance(r, BaseException), r
    return reports, registry


def _min_gap(times: list[float]) -> float:
    return min(b - a for a, b in zip(times, times[1:], strict=False))


def test_two_hosts_at_once_each_by_its_own_robots_and_delay() -> None:
    with SiteServer("127.0.0.2") as a, SiteServer("127.0.0.3") as b:
        a.routes["/robots.txt"] = Response(200, (
            b"User-agent: *\nDisallow: /\n\nUser-agent: synthpipe-test-crawler\nDisallow: /shop/\n"
            b"Allow: /shop/model/\nDisallow: /*.jpg$\nDisallow: /*?*sort=\nCrawl-delay: 0.4\n"), "text/plain")
        a.routes["/"] = page('<a href="/shop/dress">d</a> <a href="/shop/model/anna">m</a> '
                             '<a href="/list?sort=price">s</a> <a href="/list?page=2">p</a>'
                             '<img src="/img/a.jpg"><img src="/img/a.jpg?v=1"><img src="/img/b.png">')
        for path in ("/shop/dress", "/shop/model/anna", "/list"):
            a.routes[path] = page(f'<img src="/img{path.replace("/", "-")}.png">')
        for name in ("a.jpg", "b.png", "-shop-dress.png", "-shop-model-anna.png", "-list.png"):
            a.routes[f"/img/{name}"] = image("JPEG" if name.endswith("jpg") else "PNG")
        b.routes["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /private\n", "text/plain")
        b.routes["/"] = page("".join(f'<a href="/p{i}">p</a>' for i in range(4)) + '<a href="/private/x">x</a>')
        for i in range(4):
            b.routes[f"/p{i}"] = page(f'<img src="/img/{i}.png">')
            b.routes[f"/img/{i}.png"] = image()
        reports, _registry = _crawl(_site("a", a.url("/"), 0.05) + _site("b", b.url("/"), 0.25), concurrency=2,
                                    sitemaps=False)
        a_paths, b_paths = a.paths(), b.paths()
        a_times, b_times = a.times(), b.times()
    # robots.txt by RFC 9309, checked against what each server was asked for
    assert "/shop/dress" not in a_paths and "/shop/model/anna" in a_paths  # longest match
    assert "/img/a.jpg" not in a_paths and "/img/a.jpg?v=1" in a_paths  # $ anchors the end
    assert "/list?sort=price" not in a_paths and "/list?page=2" in a_paths  # wildcard in the query
    assert not [p for p in b_paths if p.startswith("/private")]
    assert {f"/p{i}" for i in range(4)} <= set(b_paths)
    assert {r.site: len(r.robots_blocked) for r in reports} == {"a": 3, "b": 1}
    # politeness: Crawl-delay (0.4) over the site's 0.05 on a, the site's 0.25 on b
    assert len(a_times) >= 6 and _min_gap(a_times) >= 0.4 - SLACK
    assert len(b_times) >= 9 and _min_gap(b_times) >= 0.25 - SLACK
    # and the two were crawled at once, not one after the other
    assert b_times[0] < a_times[-1] and a_times[0] < b_times[-1]


def test_pages_found_only_through_sitemaps_and_image_sitemaps() -> None:
    with SiteServer("127.0.0.4") as shop, SiteServer("127.0.0.5") as cdn:
        cdn_host = f"127.0.0.5:{cdn.port}"
        shop.routes["/robots.txt"] = Response(200, (
            f"User-agent: *\nDisallow: /hidden/secret\nSitemap: {shop.url('/maps/index.xml')}\n").encode(),
            "text/plain")
        shop.routes["/"] = page("no links here")
        shop.routes["/maps/index.xml"] = Response(200, (
            b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            b"<sitemap><loc>/maps/pages.xml.gz</loc></sitemap><sitemap><loc>/maps/images.xml</loc></sitemap>"
            b"</sitemapindex>"), "application/xml")
        pages = "".join(f"<url><loc>{shop.url(p)}</loc></url>" for p in
                        ("/hidden/p1", "/hidden/p2", "/hidden/secret", "/account/x"))
        pages += f"<url><loc>{cdn.url('/offsite-page')}</loc></url>"
        shop.routes["/maps/pages.xml.gz"] = Response(200, gzip.compress(
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{pages}</urlset>'.encode()),
            "application/gzip")
        shop.routes["/maps/images.xml"] = Response(200, (
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
            'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">'
            f"<url><loc>{shop.url('/hidden/p3')}</loc><image:image><image:loc>{cdn.url('/i/p3.png')}"
            "</image:loc></image:image></url></urlset>").encode(), "application/xml")
        for i in (1, 2, 3):
            shop.routes[f"/hidden/p{i}"] = page(f'<img src="/img/{i}.png">')
            shop.routes[f"/img/{i}.png"] = image()
        cdn.routes["/robots.txt"] = Response(404, b"")
        cdn.routes["/i/p3.png"] = image()
        extra = f'        deny: ["^/account"]\n        hosts: ["{cdn_host}"]\n'
        reports, registry = _crawl(_site("shop", shop.url("/"), 0.05, extra))
        shop_paths, cdn_paths = shop.paths(), cdn.paths()
    report = reports[0]
    assert {"/hidden/p1", "/hidden/p2", "/hidden/p3"} <= set(shop_paths)
    assert "/hidden/secret" not in shop_paths and "/account/x" not in shop_paths  # robots, deny
    assert "/offsite-page" not in cdn_paths  # a sitemap names no page of another site
    assert report.pages_found_via == {"start": 1, "sitemap": 3}
    assert report.sitemap.pages == 3 and report.sitemap.images == 1
    assert len(report.sitemap.files_read) == 3 and report.sitemap.entries_skipped == {
        "allow/deny": 1, "off-site": 1, "robots": 1}
    got = {(u.rsplit("/", 1)[-1], p.rsplit("/", 1)[-1], via) for u, p, via in registry.calls}
    assert got == {("1.png", "p1", "sitemap"), ("2.png", "p2", "sitemap"), ("3.png", "p3", "sitemap"),
                   ("p3.png", "p3", "image_sitemap")}


def test_without_a_sitemap_line_the_default_sitemap_is_read_and_the_larger_delay_holds() -> None:
    with SiteServer("127.0.0.30") as shop:
        shop.routes["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /private\nCrawl-delay: 0.1\n",
                                              "text/plain")  # no Sitemap: line
        shop.routes["/"] = page("no links here")
        shop.routes["/sitemap.xml"] = Response(200, (
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>{shop.url(f'/only-in-map/{i}')}</loc></url>" for i in range(3))
            + "</urlset>").encode(), "application/xml")
        for i in range(3):
            shop.routes[f"/only-in-map/{i}"] = page(f'<img src="/img/{i}.png">')
            shop.routes[f"/img/{i}.png"] = image()
        reports, registry = _crawl(_site("shop", shop.url("/"), 0.3))  # the site's delay is the larger
        paths, times = shop.paths(), shop.times()
    assert "/sitemap.xml" in paths and {f"/only-in-map/{i}" for i in range(3)} <= set(paths)
    assert reports[0].pages_found_via == {"start": 1, "sitemap": 3}
    assert {via for _, _, via in registry.calls} == {"sitemap"} and len(registry.calls) == 3
    assert len(times) >= 8 and _min_gap(times) >= 0.3 - SLACK  # max(delay_s 0.3, Crawl-delay 0.1)


def test_requests_to_other_hosts_are_blocked_inside_the_browser() -> None:
    with SiteServer("127.0.0.6") as shop, SiteServer("127.0.0.7") as tracker, SiteServer("127.0.0.8") as cdn:
        shop.routes["/"] = page(
            f'<script src="{cdn.url("/lib.js")}"></script>'
            f'<script src="{tracker.url("/track.js")}"></script>'
            f'<iframe src="{tracker.url("/frame")}"></iframe>'
            f"<script>fetch('{tracker.url('/beacon')}').catch(() => 0);"
            f"const s = document.createElement('script'); s.src = '{tracker.url('/late.js')}';"
            "document.head.appendChild(s);</script>"
            '<a href="/away">away</a><img src="/img/1.png">')
        shop.routes["/away"] = Response(302, b"", headers={"Location": tracker.url("/landing")})
        shop.routes["/img/1.png"] = image()
        cdn.routes["/lib.js"] = Response(200, b"window.lib = 1;", "application/javascript")
        for path in ("/track.js", "/frame", "/beacon", "/late.js", "/landing"):
            tracker.routes[path] = page("should never be asked for")
        extra = f'        hosts: ["127.0.0.8:{cdn.port}"]\n'
        reports, registry = _crawl(_site("shop", shop.url("/"), 0.0, extra), sitemaps=False)
        tracker_paths, cdn_paths = tracker.paths(), cdn.paths()
    report = reports[0]
    assert tracker_paths == [], f"the browser reached another host: {tracker_paths}"
    assert cdn_paths == ["/lib.js"]  # a host the site file names is the site's own
    blocked = {s["url"].rsplit("/", 1)[-1] for s in report.blocked_samples}
    assert {"track.js", "frame", "beacon", "late.js", "landing"} <= blocked
    assert report.blocked_requests == len(report.blocked_samples) >= 5
    assert report.blocked_by_type["Document"] >= 2 and report.blocked_by_type["Script"] >= 2
    assert [(r.kind, r.to) for r in report.off_site_redirects] == [("page", tracker.url("/landing"))]
    assert len(registry.calls) == 1


def test_a_page_reaches_its_host_only_during_its_own_render() -> None:
    """Between two renders (outside the politeness slot) a page's timers cannot reach its host."""
    from worker_scrape.browser import Browser
    from worker_scrape.urls import is_same_site, site_hosts

    with SiteServer("127.0.0.13") as shop:
        shop.routes["/"] = page("<script>fetch('/during'); setTimeout(() => fetch('/after'), 400);</script>")
        shop.routes["/during"] = shop.routes["/after"] = Response(200, b"{}", "application/json")
        hosts = site_hosts([shop.url("/")])
        with Browser(ScrapeSettings(user_agent=UA, settle_s=0.1, scroll_steps=0)) as browser:
            rendered = browser.render(shop.url("/"), allow=lambda u: is_same_site(u, hosts))
            time.sleep(0.8)
            assert rendered.blocked == []
        assert "/during" in shop.paths() and "/after" not in shop.paths()


def _cli(*args: str, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "SE_OFFLINE": "true", **env}
    return subprocess.Popen([sys.executable, "-m", "common.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def _sites_file(tmp_path: Path, url: str, delay: float) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text("categories:\n  - name: shops\n    sites:" + _site("slow-shop", url, delay))
    return path


def test_a_sigkilled_crawl_resumes_from_its_checkpoint_without_refetching(tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from common.store.db import get_database
    from common.store.rows import Asset, Job

    with SiteServer("127.0.0.9") as shop:
        shop.routes["/"] = page("".join(f'<a href="/p{i}">p{i}</a>' for i in range(6)))
        for i in range(6):
            shop.routes[f"/p{i}"] = page(f'<img src="/img/{i}.png">')
            shop.routes[f"/img/{i}.png"] = image(size=(160, 160), noise=True)  # big enough to be stored
        sites = _sites_file(tmp_path, shop.url("/"), 0.2)
        queued = _cli("crawl", "--sites", str(sites), "--batches", "1", "--seed", "1")
        assert queued.wait(60) == 0, queued.communicate()[1]
        env = {"SYNTHPIPE_JOBS__LEASE_S": "3", "SYNTHPIPE_SCRAPE__SETTLE_S": "0.05",
               "SYNTHPIPE_PAIRING__AUTO_PAIR": "false"}
        first = _cli("run", "--stage", "scrape", **env)
        deadline = time.monotonic() + 120
        while sum(p.startswith("/img/") for p in shop.paths()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        db = get_database()
        with db.session() as s:
            job = s.scalars(select(Job).where(Job.stage == "scrape")).one()
            assert job.status == "running"
            checkpoint = (job.result or {})["crawl_checkpoint"]
            stored_before = s.scalar(select(func.count()).select_from(Asset))
        done_pages = [u.split(str(shop.port), 1)[1] for u in checkpoint["report"]["pages_visited"]]
        assert len(done_pages) >= 2 and stored_before >= 2
        before = list(shop.paths())
        time.sleep(3.2)  # the dead run's lease runs out; the next run takes the job back
        second = _cli("run", "--stage", "scrape", "--json", **env)
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err
        after = shop.paths()[len(before):]
    assert json.loads(out)["scrape"]["succeeded"] == 1
    assert not set(done_pages) & set(after), f"pages stored before the kill were loaded again: {after}"
    pages_loaded = [p for p in before + after if p == "/" or p.startswith("/p")]
    assert len(pages_loaded) <= 7 + 1  # every page once; at most the one in flight twice
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.stage == "scrape")).one()
        assert job.status == "succeeded" and job.result["resumed"] == 1
        assert s.scalar(select(func.count()).select_from(Asset)) == 6
        assert len(job.result["report"]["pages_visited"]) == 7


def test_a_missing_browser_is_a_settings_error_and_the_jobs_go_back(tmp_path: Path) -> None:
    from sqlalchemy import select

    from common.store.db import get_database
    from common.store.rows import Job

    sites = _sites_file(tmp_path, "http://127.0.0.10:9/", 0.0)
    queued = _cli("crawl", "--sites", str(sites), "--batches", "2", "--seed", "1")
    assert queued.wait(60) == 0
    run = _cli("run", "--stage", "scrape", "--concurrency", "2",  # both jobs in one batch
               SYNTHPIPE_SCRAPE__CHROMIUM_PATH=str(tmp_path / "no-chromium"))
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "scrape.chromium_path" in lines[-1] and "scripts/install.sh" in lines[-1]
    with get_database().session() as s:
        jobs = s.scalars(select(Job).where(Job.stage == "scrape")).all()
        assert [(j.status, j.reason, j.attempts < j.max_attempts) for j in jobs] == [
            ("queued", "browser.missing", True)] * 2
