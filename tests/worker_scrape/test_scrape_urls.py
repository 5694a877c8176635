"""URL rules, srcset parsing and the politeness throttle (no network, no browser)."""

from __future__ import annotations

import re
import threading
import time

import pytest

from worker_scrape.extract import group_versions, largest, page_candidates, parse_srcset
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import (
    TrapGuard,
    TrapLimits,
    host_key,
    is_same_site,
    normalize_url,
    path_allowed,
    site_hosts,
)


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("HTTP://Shop.Example:80/a/b?z=1&a=2#frag", None, "http://shop.example/a/b?a=2&z=1"),
        ("https://shop.example:443", None, "https://shop.example/"),
        ("https://shop.example:8443/x", None, "https://shop.example:8443/x"),
        (
            "../img/a.jpg?b=&a=1",
            "http://s.example/p/q/page.html",
            "http://s.example/p/img/a.jpg?a=1&b=",
        ),
        ("//cdn.example/i.png", "https://s.example/", "https://cdn.example/i.png"),
        ("/a/./b/../c/%7e%2f", "http://s.example/", "http://s.example/a/c/%7E%2F"),
        ("http://user:pw@s.example/x", None, "http://s.example/x"),
        ("mailto:x@y.example", None, None),
        ("javascript:void(0)", "http://s.example/", None),
        ("data:image/png;base64,AAA", None, None),
        ("http://[::1]:8080/x", None, "http://[::1]:8080/x"),
        ("http://s.example:99999/", None, None),
        ("", None, None),
    ],
)
def test_normalize_url(url: str, base: str | None, expected: str | None) -> None:
    assert normalize_url(url, base) == expected


def test_same_site_and_hosts() -> None:
    hosts = site_hosts(["https://www.shop.example/women/", "http://127.0.0.1:8000/"])
    assert is_same_site("http://shop.example/x", hosts)
    assert is_same_site("https://www.shop.example/x", hosts)
    assert is_same_site("http://127.0.0.1:8000/y", hosts)
    assert not is_same_site("http://127.0.0.1:8001/y", hosts)
    assert not is_same_site("http://localhost:8000/y", hosts)
    assert not is_same_site("https://cdn.shop.example/x", hosts)
    assert host_key("HTTPS://A.example:443/x") == "a.example"


def test_allow_deny_on_path() -> None:
    allow = [re.compile(r"^/(women|men)/")]
    deny = [re.compile(r"^/women/sale")]
    assert path_allowed("http://s.example/women/dress?x=/account", allow, deny)
    assert not path_allowed("http://s.example/women/sale/1", allow, deny)
    assert not path_allowed("http://s.example/kids/", allow, deny)
    assert path_allowed("http://s.example/anything", [], [])
    assert not path_allowed("http://s.example/account", [], [re.compile("^/account")])


def test_trap_guard_bounds() -> None:
    guard = TrapGuard(
        TrapLimits(max_url_length=60, max_path_depth=4, max_segment_repeats=2, max_query_variants=3)
    )
    assert guard.check("http://s.example/" + "x" * 80) == "url too long"
    assert guard.check("http://s.example/a/b/c/d/e") == "path too deep"
    assert guard.check("http://s.example/a/b/a/") is None
    assert guard.check("http://s.example/a/a/a/") == "repeated path segment"
    results = [guard.check(f"http://s.example/cal?page={i}") for i in range(6)]
    assert results == [None, None, None] + ["too many query variants"] * 3
    assert guard.check("http://s.example/cal?page=1") is None  # already accepted variant
    assert guard.check("http://s.example/other?page=9") is None


def test_parse_srcset() -> None:
    cands = parse_srcset("a.jpg 320w, https://c.example/w_640,h_480/b.jpg 640w,c.jpg 1280w")
    assert [(c.url, c.width) for c in cands] == [
        ("a.jpg", 320),
        ("https://c.example/w_640,h_480/b.jpg", 640),
        ("c.jpg", 1280),
    ]
    assert largest(cands).url == "c.jpg"
    xs = parse_srcset("one.jpg, two.jpg 2x, three.jpg 1.5x")
    assert [(c.url, c.x) for c in xs] == [("one.jpg", 1.0), ("two.jpg", 2.0), ("three.jpg", 1.5)]
    assert largest(xs).url == "two.jpg"
    assert [c.url for c in parse_srcset("ok.jpg 2x, bad.jpg 2q, odd.jpg 10w 2x")] == ["ok.jpg"]
    assert parse_srcset("") == [] and largest([]) is None


def page_image_urls(imgs: list[dict], singles: list, base: str) -> list[str]:
    """The best URL of each photo of a page, in page order."""
    cands = page_candidates({"imgs": imgs, "singles": singles}, base)
    return [g.best.url for g in group_versions(cands) if not g.best.placeholder]


def image_urls_from_img(rec: dict) -> list[str]:
    """The URL taken for one ``<img>`` record (at most one: its best version), relative as given."""
    base = "http://s.example/"
    return [u.removeprefix(base) for u in page_image_urls([rec], [], base)]


def test_image_choice_per_img() -> None:
    assert image_urls_from_img({"src": "a.jpg"}) == ["a.jpg"]
    assert image_urls_from_img({"src": "ph.gif", "lazy": ["real.jpg"]}) == ["real.jpg"]
    assert image_urls_from_img({"src": "data:image/gif;base64,R0", "lazy": []}) == []
    rec = {"src": "small.jpg", "srcset": "m.jpg 640w, l.jpg 1600w", "sources": ["x.webp 2000w"]}
    assert image_urls_from_img(rec) == ["x.webp"]
    assert image_urls_from_img({"src": "1x.jpg", "srcset": "2x.jpg 2x"}) == ["2x.jpg"]
    assert image_urls_from_img({"src": "", "lazysets": ["a.jpg 100w, b.jpg 200w"]}) == ["b.jpg"]
    urls = page_image_urls(
        [{"src": "/i/a.jpg"}, {"src": "/i/a.jpg#x"}], ["bg.png", "data:x"], "http://s.example/p/"
    )
    assert urls == ["http://s.example/i/a.jpg", "http://s.example/p/bg.png"]


def test_throttle_spaces_requests_per_host() -> None:
    throttle = HostThrottle()
    stamps: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}

    def worker(host: str) -> None:
        for _ in range(3):
            with throttle.slot(host, 0.1):
                start = time.monotonic()
                time.sleep(0.02)
                stamps[host].append((start, time.monotonic()))

    threads = [threading.Thread(target=worker, args=(h,)) for h in ("a", "a", "b")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for host, spans in stamps.items():
        spans.sort()
        for (_s1, e1), (s2, _e2) in zip(spans, spans[1:], strict=False):
            assert s2 - e1 >= 0.1 - 1e-3, host
    assert len(stamps["a"]) == 6 and len(stamps["b"]) == 3
    # host b ran alongside host a, not after it
    assert min(s for s, _e in stamps["b"]) - t0 < 0.3  # host a alone takes >= 0.5 s
