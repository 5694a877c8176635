"""Sitemaps as crawl seeds: ``<urlset>`` files, ``<sitemapindex>`` files pointing at more of them,
gzip-compressed ones, and Google image-sitemap ``<image:loc>`` entries (an image with its page).

Reading is bounded: at most ``max_files`` files per site, ``max_bytes`` per file after
decompression (a gzip bomb stops there), ``deadline_s`` per file (the bounded reader),
``max_urls`` page entries. A file that is not a well-formed sitemap (an HTML error page served
with 200, an undefined entity, entity declarations) gives what came before the fault, and its
reason code is recorded among the failures; the crawl goes on. Every request goes through
the per-host politeness slot and robots.txt; the caller filters the entries by the site's rules.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit
from xml.parsers import expat

import requests

from worker_scrape.errors import FetchError
from worker_scrape.reader import open_url
from worker_scrape.throttle import HostThrottle
from worker_scrape.urls import host_key, normalize_url

log = logging.getLogger(__name__)

_ROOTS = ("urlset", "sitemapindex")


@dataclass
class SitemapEntry:
    """One page named by a sitemap, with the images an image sitemap gives for it."""

    page_url: str
    images: list[str] = field(default_factory=list)


@dataclass
class SitemapFile:
    """What one sitemap file gave; ``error`` is the reason code of a fault that stopped it."""

    children: list[str] = field(default_factory=list)
    entries: list[SitemapEntry] = field(default_factory=list)
    error: str | None = None
    message: str = ""


@dataclass
class SitemapResult:
    entries: list[SitemapEntry] = field(default_factory=list)
    files_read: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # sitemap URL -> reason code
    truncated: bool = False  # a bound (files, bytes or URLs) stopped the reading


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def default_sitemap(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/sitemap.xml", "", ""))


def read_body(
    session: requests.Session, url: str, *, max_bytes: int, timeout_s: float, deadline_s: float = 120.0
) -> bytes | None:
    """The body of ``url`` (gunzipped when it is gzip), at most ``max_bytes``; None unless 200.
    Read through the bounded reader: all of it within ``deadline_s``, each read within
    ``timeout_s``; raises :class:`~worker_scrape.errors.FetchError` when it comes to nothing."""
    with open_url(session, url, deadline=time.monotonic() + deadline_s, read_timeout_s=timeout_s,
                  headers={"Accept-Encoding": "identity"}, allow_redirects=True) as resp:
        if resp.status != 200:
            return None
        raw = resp.read(max_bytes + 1)
    if raw[:2] != b"\x1f\x8b":
        return raw[:max_bytes]
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return inflater.decompress(raw, max_bytes)
    except zlib.error:
        return None


class _Refused(Exception):
    """Raised inside the expat handlers to stop a file that is not a sitemap or declares entities."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Collector:
    """Expat handlers that collect ``<sitemap><loc>``, ``<url><loc>`` and ``<url><image:image>
    <image:loc>`` as the file is parsed, so a later error keeps what came before."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.result = SitemapFile()
        self.stack: list[str] = []
        self.text: list[str] | None = None  # inside a <loc>
        self.loc: str | None = None  # of the <url> or <sitemap> open now
        self.images: list[str] = []

    def start(self, name: str, _attrs: object) -> None:
        tag = _local(name)
        if not self.stack and tag not in _ROOTS:
            raise _Refused("sitemap.malformed", f"root element <{tag[:50]}> is not <urlset> or <sitemapindex>")
        self.stack.append(tag)
        if tag in ("url", "sitemap"):
            self.loc, self.images = None, []
        elif tag == "loc":
            self.text = []

    def data(self, text: str) -> None:
        if self.text is not None:
            self.text.append(text)

    def end(self, _name: str) -> None:
        tag = self.stack.pop()
        parent = self.stack[-1] if self.stack else ""
        if tag == "loc" and self.text is not None:
            text, self.text = "".join(self.text), None
            url = normalize_url(text, self.base) if text.strip() else None
            if parent in ("url", "sitemap") and self.loc is None:
                self.loc = url or ""
            elif parent == "image" and len(self.stack) >= 2 and self.stack[-2] == "url" and url:
                self.images.append(url)
        elif tag in ("url", "sitemap") and self.loc:
            if tag == "sitemap":
                self.result.children.append(self.loc)
            else:
                self.result.entries.append(SitemapEntry(self.loc, self.images))
            self.loc, self.images = None, []

    @staticmethod
    def entity(*_args: object) -> None:
        raise _Refused("sitemap.malformed", "entity declarations are not allowed in a sitemap")


def read_sitemap_xml(body: bytes, base: str) -> SitemapFile:
    """The child sitemaps and page entries of one sitemap file. Never raises: a file that is not
    well-formed XML (an HTML error page, ``&nbsp;``, a mismatched tag), that declares entities
    (billion laughs) or whose root is not a sitemap's gives what came before the fault, with the
    fault's reason code (``sitemap.malformed``) in ``error`` and what it was in ``message``."""
    collector = _Collector(base)
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.data
    parser.EntityDeclHandler = collector.entity
    parser.UnparsedEntityDeclHandler = collector.entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    out = collector.result
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        out.error, out.message = "sitemap.malformed", f"not well-formed XML: {exc}"
    except _Refused as exc:
        out.error, out.message = exc.code, str(exc)
    except (ValueError, LookupError, RecursionError) as exc:  # e.g. an encoding Python does not know
        out.error, out.message = "sitemap.malformed", f"unreadable: {type(exc).__name__}"
    if out.error:
        log.info("sitemap %s: %s (%s), kept %d entries before it", base, out.error, out.message, len(out.entries))
    return out


def parse_sitemap(body: bytes, base: str) -> tuple[list[str], list[SitemapEntry]]:
    """(child sitemaps, page entries) of one sitemap file; malformed XML gives what came before
    (:func:`read_sitemap_xml` says why)."""
    parsed = read_sitemap_xml(body, base)
    return parsed.children, parsed.entries


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
    deadline_s: float = 120.0,
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
                body = read_body(session, url, max_bytes=max_bytes, timeout_s=timeout_s, deadline_s=deadline_s)
        except FetchError as exc:
            result.failures[url] = exc.code
            continue
        result.files_read.append(url)
        if body is None:
            result.failures[url] = "fetch.http_status"
            continue
        cut = len(body) >= max_bytes
        result.truncated |= cut
        parsed = read_sitemap_xml(body, url)
        if parsed.error and not (cut and parsed.error == "sitemap.malformed"):  # a cut file ends badly
            result.failures[url] = parsed.error
        children, entries = parsed.children, parsed.entries
        queue.extend(children)
        room = max_urls - len(result.entries)
        if len(entries) > room:
            result.truncated = True
        result.entries.extend(entries[:max(room, 0)])
    return result
