"""Turn what the browser saw into image candidate URLs: ``src``, lazy ``data-*``
attributes, ``srcset`` / ``<picture><source>`` (largest candidate only), CSS backgrounds and
``og:image``-style meta tags."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker_scrape.urls import normalize_url

_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?)([wxh])$", re.IGNORECASE)


@dataclass(frozen=True)
class SrcsetCandidate:
    url: str
    width: float | None = None  # from a "640w" descriptor
    density: float | None = None  # from a "2x" descriptor (None and no width: 1x)

    @property
    def x(self) -> float:
        return self.density if self.density is not None else 1.0


def parse_srcset(value: str | None) -> list[SrcsetCandidate]:
    """Parse a ``srcset`` attribute (HTML's algorithm, simplified: URLs may contain commas,
    descriptors end at a comma outside parentheses). Bad descriptors drop the candidate."""
    out: list[SrcsetCandidate] = []
    if not value:
        return out
    s, i, n = value, 0, len(value)
    while i < n:
        while i < n and (s[i].isspace() or s[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and not s[i].isspace():
            i += 1
        url = s[start:i]
        descriptors: list[str] = []
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth, buf = 0, ""
            while i < n:
                ch = s[i]
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth = max(0, depth - 1)
                elif ch == "," and depth == 0:
                    i += 1
                    break
                buf += ch
                i += 1
            descriptors = buf.split()
        cand = _candidate(url, descriptors)
        if cand is not None:
            out.append(cand)
    return out


def _candidate(url: str, descriptors: list[str]) -> SrcsetCandidate | None:
    if not url:
        return None
    width = density = None
    for d in descriptors:
        m = _DESCRIPTOR.match(d)
        if not m:
            return None
        num, kind = float(m.group(1)), m.group(2).lower()
        if kind == "w":
            width = num
        elif kind == "x":
            density = num
    if width is not None and density is not None:
        return None
    return SrcsetCandidate(url, width=width, density=density)


def largest(candidates: Iterable[SrcsetCandidate]) -> SrcsetCandidate | None:
    """The largest candidate: by ``w`` when any candidate has a width descriptor (the others
    are then ignored), else by pixel density (no descriptor counts as 1x). Ties: first."""
    cands = list(candidates)
    widths = [c for c in cands if c.width is not None]
    if widths:
        return max(widths, key=lambda c: c.width or 0.0)
    return max(cands, key=lambda c: c.x) if cands else None


def _usable(url: str | None) -> bool:
    if not url:
        return False
    return not url.strip().lower().startswith(("data:", "blob:", "javascript:", "about:"))


def image_urls_from_img(rec: dict[str, Any]) -> list[str]:
    """The URL to take for one ``<img>`` record from the extraction script (at most one).

    Lazy attributes win over ``src`` (which is often a placeholder); a ``srcset`` (own, lazy,
    or from ``<picture><source>``) gives its largest candidate, with ``src`` counted as 1x.
    """
    pool: list[SrcsetCandidate] = []
    for value in [rec.get("srcset"), *(rec.get("lazysets") or []), *(rec.get("sources") or [])]:
        pool.extend(c for c in parse_srcset(value) if _usable(c.url))
    lazy = [u for u in rec.get("lazy") or [] if _usable(u)]
    single = lazy[0] if lazy else (rec.get("src") if _usable(rec.get("src")) else None)
    if single:
        pool.append(SrcsetCandidate(single.strip()))
    best = largest(pool)
    return [best.url] if best else []


def page_image_urls(imgs: list[dict[str, Any]], singles: list[str], base: str) -> list[str]:
    """Absolute, normalised, de-duplicated image URLs of a page, in page order."""
    seen: set[str] = set()
    out: list[str] = []
    raw = [u for rec in imgs for u in image_urls_from_img(rec)]
    raw += [u for u in singles if _usable(u)]
    for u in raw:
        norm = normalize_url(u, base)
        if norm and norm not in seen:
            seen.add(norm)
            out.append(norm)
    return out
