"""Sitemaps as crawl seeds: ``<urlset>`` files, ``<sitemapindex>`` files pointing at more of them,
gzip-compressed ones, and Google image-sitemap ``<image:loc>`` entries (an image with its page).

Reading is bounded: at most ``max_files`` files per site, ``max_bytes`` per file after
decompression (a gzip bomb stops there), ``max_urls`` page entries. Every request goes through
the per-host politeness slot and robots.txt; the caller filters the entries by the site's rules.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

import requests

from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key, normalize_url

log = logging.getLogger(__name__)


@dataclass
class SitemapEntry:
    """One page named by a sitemap, with the images an image sitemap gives for it."""

    page_url: str
    images: list[str] = field(default_factory=list)


@dataclass
class SitemapResult:
    entries: list[SitemapEntry] = field(default_factory=list)
    files_read: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # sitemap URL -> why
    truncated: bool = False  # a bound (files, bytes or URLs) stopped the reading


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def default_sitemap(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/sitemap.xml", "", ""))


def read_body(session: requests.Session, url: str, *, max_bytes: int, timeout_s: float) -> bytes | None:
    """The body of ``url`` (gunzipped when it is gzip), at most ``max_bytes``; None unless 200."""
    with session.get(url, stream=True, timeout=timeout_s, headers={"Accept-Encoding": "identity"}) as resp:
        if resp.status_code != 200:
            return None
        raw = bytearray()
        for chunk in resp.iter_content(64 * 1024):
            raw += chunk
            if len(raw) > max_bytes:
                break
    if raw[:2] != b"\x1f\x8b":
        return bytes(raw[:max_bytes])
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return inflater.decompress(bytes(raw), max_bytes)
    except zlib.error:
        return None


def parse_sitemap(body: bytes, base: str) -> tuple[list[str], list[SitemapEntry]]:
    """(child sitemaps, page entries) of one sitemap file; malformed XML gives what came before."""
    children: list[str] = []
    entries: list[SitemapEntry] = []
    parser: ElementTree.XMLPullParser = ElementTree.XMLPullParser(events=("end",))
    try:
        parser.feed(body)
        parser.close()
    except ElementTree.ParseError:
        log.info("sitemap %s: malformed XML, kept the entries before the error", base)
    events: Any = parser.read_events()
    for _event, elem in events:
        if not isinstance(elem, ElementTree.Element):
            continue
        tag = _local(elem.tag)
        if tag not in ("url", "sitemap"):
            continue
        loc = next((c.text for c in elem if _local(c.tag) == "loc" and c.text), None)
        url = normalize_url(loc, base) if loc else None
        if url is None:
            continue
        if tag == "sitemap":
            children.append(url)
        else:
            images = [normalize_url(c.text, base) for img in elem if _local(img.tag) == "image"
                      for c in img if _local(c.tag) == "loc" and c.text]
            entries.append(SitemapEntry(url, [i for i in images if i]))
        elem.clear()
    return children, entries


def read_sitemaps(
    roots: list[str],
    *,
    session: requests.Session,
    throttle: HostThrottle,
    delay_for: Callable[[str], float],
    allowed: Callable[[str], bool],
    max_files: int,
    max_bytes: int,
    max_urls: int,
    timeout_s: float,
) -> SitemapResult:
    """Read ``roots`` and the sitemaps their indexes name, breadth-first, within the bounds.
    ``allowed(url)`` (robots.txt and the site's hosts) decides which sitemap files are read."""
    result = SitemapResult()
    queue = deque(roots)
    seen: set[str] = set()
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        if len(result.files_read) >= max_files:
            result.truncated = True
            break
        if not allowed(url):
            result.failures[url] = "robots.disallowed"
            continue
        try:
            with throttle.slot(host_key(url), delay_for(url)):
                body = read_body(session, url, max_bytes=max_bytes, timeout_s=timeout_s)
        except requests.RequestException as exc:
            result.failures[url] = f"fetch.connection: {type(exc).__name__}"
            continue
        result.files_read.append(url)
        if body is None:
            result.failures[url] = "fetch.http_status"
            continue
        if len(body) >= max_bytes:
            result.truncated = True
        children, entries = parse_sitemap(body, url)
        queue.extend(children)
        room = max_urls - len(result.entries)
        if len(entries) > room:
            result.truncated = True
        result.entries.extend(entries[:max(room, 0)])
    return result
