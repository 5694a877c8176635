"""robots.txt by RFC 9309 (Protego): the RFC's own examples and rules big shops write, read through
the cache from a real server on a loopback address, and sitemap files read within their bounds."""

from __future__ import annotations

import gzip

import pytest
import requests
from fixtures.testsite import Response, SiteServer

from worker_scrape.robots import RobotsCache  # noqa: E402
from worker_scrape.sitemaps import parse_sitemap, read_sitemaps  # noqa: E402
from worker_scrape.throttle import HostThrottle  # noqa: E402

# RFC 9309 section 5.1, verbatim
RFC_EXAMPLE = b"""User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""

# the kinds of rule large shops publish: faceted navigation, carts, checkouts, assets
SHOP_RULES = b"""User-agent: *
Disallow: /

User-agent: synthpipe
Disallow: /*?*sort=
Disallow: /*?*filter
Disallow: /checkout
Disallow: /*/cart$
Disallow: /shop/
Allow: /shop/model/
Disallow: /*.jpg$
Allow: /same
Disallow: /same
Allow: /*.css$
Disallow: /assets/
Crawl-delay: 1.5
Sitemap: https://shop.example/sitemap_index.xml
Sitemap: https://cdn.shop.example/images.xml.gz
"""


def _cache(server: SiteServer, body: bytes, ua: str) -> tuple[RobotsCache, str]:
    server.routes["/robots.txt"] = Response(200, body, "text/plain")
    return RobotsCache(ua), server.url("", server.host)


@pytest.fixture()
def server():
    with SiteServer("127.0.0.2") as srv:
        yield srv


@pytest.mark.parametrize(("ua", "path", "allowed"), [
    # foobot's own group: everything disallowed but two files
    ("foobot", "/example/page.html", True), ("foobot", "/example/allowed.gif", True),
    ("foobot", "/other", False), ("foobot", "/publications/x", False),
    # barbot and bazbot share one group; only /example/page.html is theirs to avoid
    ("barbot", "/example/page.html", False), ("bazbot", "/example/page.html", False),
    ("barbot", "/example/other.html", True), ("bazbot", "/x.gif", True),
    # quxbot's group is empty: everything allowed, the * group does not apply
    ("quxbot", "/example/page.html", True), ("quxbot", "/a.gif", True),
    # anyone else falls to *: *.gif$ anywhere, /example/, but /publications/ allowed
    ("otherbot/2.0", "/a/b.gif", False), ("otherbot/2.0", "/a/b.gif?x=1", True),
    ("otherbot/2.0", "/example/x", False), ("otherbot/2.0", "/publications/x", True),
    ("otherbot/2.0", "/", True),
])
def test_rfc_9309_example_groups(server: SiteServer, ua: str, path: str, allowed: bool) -> None:
    robots, base = _cache(server, RFC_EXAMPLE, ua)
    assert robots.allowed(base + path) is allowed


@pytest.mark.parametrize(("path", "allowed"), [
    ("/list?sort=price", False), ("/list?page=2&sort=price", False), ("/list?page=2", True),
    ("/women?filter=red", False), ("/checkout/step1", False), ("/de/cart", False), ("/de/cart/x", True),
    ("/shop/dress", False), ("/shop/model/anna", True),  # the longer Allow wins over /shop/
    ("/img/a.jpg", False), ("/img/a.jpg?v=3", True), ("/img/a.jpgx", True),  # $ anchors the end
    ("/same", True),  # Allow and Disallow of equal length: Allow wins
    ("/assets/site.css", False),  # /assets/ (8) is longer than /*.css$ (7)
    ("/about", True),
])
def test_shop_rules_wildcards_end_anchor_longest_match_and_ties(server: SiteServer, path: str,
                                                                allowed: bool) -> None:
    robots, base = _cache(server, SHOP_RULES, "synthpipe-test-crawler/1.0")
    assert robots.allowed(base + path) is allowed


def test_crawl_delay_sitemaps_and_one_fetch_per_host(server: SiteServer) -> None:
    robots, base = _cache(server, SHOP_RULES, "synthpipe-test-crawler/1.0")
    assert robots.crawl_delay(base + "/") == 1.5
    assert robots.sitemaps(base + "/") == ["https://shop.example/sitemap_index.xml",
                                           "https://cdn.shop.example/images.xml.gz"]
    assert not RobotsCache("otherbot").allowed(base + "/about")  # the * group: Disallow: /
    assert server.paths().count("/robots.txt") == 2  # once per cache


def test_a_cached_robots_txt_is_read_again_when_it_is_old(server: SiteServer) -> None:
    import time

    server.routes["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /a\n", "text/plain")
    robots = RobotsCache("bot", max_age_s=0.3)
    base = server.url("")
    assert not robots.allowed(base + "/a") and robots.allowed(base + "/b")
    server.routes["/robots.txt"] = Response(200, b"User-agent: *\nDisallow: /b\n", "text/plain")
    assert not robots.allowed(base + "/a")  # still the cached rules
    time.sleep(0.35)
    assert robots.allowed(base + "/a") and not robots.allowed(base + "/b")
    assert server.paths().count("/robots.txt") == 2


IMAGE_SITEMAP = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"
        xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">
  <url><loc>https://shop.example/p/1</loc>
    <image:image><image:loc>https://cdn.shop.example/1-a.jpg</image:loc></image:image>
    <image:image><image:loc>https://cdn.shop.example/1-b.jpg</image:loc></image:image>
  </url>
  <url><loc>https://shop.example/p/2</loc><lastmod>2026-01-01</lastmod></url>
</urlset>"""


def test_sitemap_parsing_index_urlset_and_image_entries() -> None:
    children, entries = parse_sitemap(IMAGE_SITEMAP, "https://shop.example/sitemap.xml")
    assert children == []
    assert [(e.page_url, e.images) for e in entries] == [
        ("https://shop.example/p/1", ["https://cdn.shop.example/1-a.jpg", "https://cdn.shop.example/1-b.jpg"]),
        ("https://shop.example/p/2", [])]
    index = (b'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
             b"<sitemap><loc>/s1.xml.gz</loc></sitemap><sitemap><loc>https://shop.example/s2.xml</loc>"
             b"</sitemap></sitemapindex>")
    children, entries = parse_sitemap(index, "https://shop.example/sitemap.xml")
    assert children == ["https://shop.example/s1.xml.gz", "https://shop.example/s2.xml"] and entries == []
    broken = IMAGE_SITEMAP.replace(b"</urlset>", b"<url><loc>https://shop.example/p/3</loc><url>")
    assert [e.page_url for e in parse_sitemap(broken, "https://shop.example/")[1]][:2] == [
        "https://shop.example/p/1", "https://shop.example/p/2"]


def test_sitemaps_are_bounded_in_files_bytes_and_urls(server: SiteServer) -> None:
    urls = "".join(f"<url><loc>/p/{i}</loc></url>" for i in range(50))
    server.routes["/small.xml"] = Response(200, f"<urlset>{urls}</urlset>".encode(), "application/xml")
    bomb = gzip.compress(b"<urlset>" + b"<url><loc>/bomb</loc></url>" * 400_000 + b"</urlset>")
    assert len(bomb) < 200_000
    server.routes["/bomb.xml.gz"] = Response(200, bomb, "application/gzip")
    index = "".join(f"<sitemap><loc>/index{i}.xml</loc></sitemap>" for i in range(30))
    server.routes["/index.xml"] = Response(200, f"<sitemapindex>{index}</sitemapindex>".encode(), "text/xml")
    for i in range(30):
        server.routes[f"/index{i}.xml"] = Response(200, b"<urlset><url><loc>/x</loc></url></urlset>", "text/xml")

    def read(root: str, **kw: int):
        bounds = {"max_files": 5, "max_bytes": 1_000_000, "max_urls": 20, **kw}
        return read_sitemaps([server.url(root, server.host)], session=requests.Session(), throttle=HostThrottle(),
                             delay_for=lambda _u: 0.0, allowed=lambda _u: True, timeout_s=5, **bounds)

    small = read("/small.xml")
    assert len(small.entries) == 20 and small.truncated
    bombed = read("/bomb.xml.gz")
    assert bombed.truncated and 0 < len(bombed.entries) <= 20  # cut at max_bytes after gunzip
    indexed = read("/index.xml")
    assert len(indexed.files_read) == 5 and indexed.truncated
    assert sum(p.startswith("/index") for p in server.paths()) == 5
    refused = read_sitemaps([server.url("/small.xml", server.host)], session=requests.Session(),
                            throttle=HostThrottle(), delay_for=lambda _u: 0.0, allowed=lambda _u: False,
                            timeout_s=5, max_files=5, max_bytes=1000, max_urls=5)
    assert refused.entries == [] and list(refused.failures.values()) == ["robots.disallowed"]
