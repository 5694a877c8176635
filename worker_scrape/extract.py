"""Turn what the browser saw into the photos of a page, each with every version of it found, the
largest first, and a reason code for the ones that are page furniture (menus, logos, banners).

Sources of an image URL, in the order they are read: ``<img>`` (``src``, lazy ``data-*``
attributes, ``srcset``, any other ``data-*`` attribute holding an image URL or a srcset, its
``<picture><source>`` s), JSON-LD (``image``, ``ImageObject`` ``contentUrl``/``url`` with their
declared width), embedded state JSON (any string that is an image URL), ``<link rel=image_src>``,
anchors that link to image files (zoom links; one wrapping an ``<img>`` is a version of it), any
element's ``data-*`` attribute holding an image URL, ``og:image``-style meta tags and CSS
backgrounds.

Renditions of one photo are grouped: candidates of one ``<img>`` (and the anchor around it), and
candidates whose URLs are equal once size tokens are taken out (:func:`version_key`: ``/w/769/``,
``_500x500``, ``?sw=``, ``?width=``, ``_small``, ``@2x``, the extension). In a group the
members are ordered by declared width (a ``w`` descriptor, JSON-LD ``width``, a size token in the
URL), then by named size (``_thumb`` < ``_medium`` < ``_large`` < ``_zoom``), then by density;
placeholders (data URIs are never candidates; ``trans.gif``-style names, 1x1 declared sizes) come
last, so they never win a tie. A group whose members cannot all be ordered by width is marked for
the crawler to order by ``Content-Length`` (a HEAD request) when its size clues tie, or when a
full-size source (a zoom link, JSON-LD) declares no width beside versions that do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker_scrape.urls import normalize_url

_DESCRIPTOR = re.compile(r"^(\d+(?:\.\d+)?)([wxh])$", re.IGNORECASE)

# --- srcset ---------------------------------------------------------------------------------------


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
    if not url or not url.strip():
        return False
    return not url.strip().lower().startswith(("data:", "blob:", "javascript:", "about:"))


# --- size tokens and version keys ----------------------------------------------------------------

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "avif", "gif", "bmp", "tif", "tiff")
_EXT = re.compile(r"\.(?:" + "|".join(IMAGE_EXTENSIONS) + r")$", re.IGNORECASE)
_WIDTH_PARAMS = {"w", "width", "wid", "sw", "imwidth", "maxwidth", "mw", "resize", "size", "sz", "s"}
_HEIGHT_PARAMS = {"h", "height", "hei", "sh", "imheight", "maxheight", "mh"}
# rendition parameters that change the bytes, not the photo
_RENDER_PARAMS = _WIDTH_PARAMS | _HEIGHT_PARAMS | {
    "q", "qlt", "quality", "dpr", "fit", "crop", "scale", "sm", "sfrm", "fmt", "format", "auto", "im",
    "op_sharpen", "bg", "trim",
}
_SIZE_WORDS = {"w": "w", "width": "w", "s": "w", "size": "w", "resize": "w", "h": "h", "height": "h"}
_SEG_WXH = re.compile(r"^(\d{2,5})x(\d{2,5})$", re.IGNORECASE)
_SEG_W = re.compile(r"^(?:(?:w|width|s|size)[-_=:]?(\d{2,5})|(\d{2,5})(?:w|px))$", re.IGNORECASE)
_SEG_TRANSFORM = re.compile(r"^[a-z]{1,3}_[\w.:-]+(?:,[a-z]{1,3}_[\w.:-]+)*$", re.IGNORECASE)  # w_640,h_480,c_fill
_TRANSFORM_W = re.compile(r"(?:^|,)w_(\d{2,5})(?:,|$)", re.IGNORECASE)
NAMED_SIZES = {
    "tn": 1, "thumb": 1, "thumbnail": 1, "mini": 1, "xs": 1, "small": 1, "sm": 1,
    "medium": 2, "med": 2, "md": 2, "m": 2,
    "large": 3, "lg": 3, "big": 3, "l": 3,
    "xl": 4, "xxl": 4, "zoom": 4, "hd": 4, "hires": 4, "full": 4, "original": 4, "orig": 4, "max": 4,
}
_STEM_WXH = re.compile(r"[-_](\d{2,5})x(\d{2,5})(?=[-_.@]|$)", re.IGNORECASE)
_STEM_W = re.compile(r"[-_](?:w|s)?(\d{2,5})(?:px|w)(?=[-_.@]|$)|[-_]w(\d{2,5})(?=[-_.@]|$)", re.IGNORECASE)
_STEM_NAMED = re.compile(r"[-_](" + "|".join(sorted(NAMED_SIZES, key=len, reverse=True)) + r")(?=[-_.@]|$)",
                         re.IGNORECASE)
_STEM_DENSITY = re.compile(r"@(\d(?:\.\d)?)x$", re.IGNORECASE)
_STEM_BARE = re.compile(r"[-_](\d{2,4})(?=[-_]|$)")  # _500_: a size or a product number: a hint only
_PLACEHOLDER_STEM = re.compile(
    r"^(?:trans|transparent|blank|spacer|pixel|placeholder|1x1|spinner|loader|empty)"
    r"(?:[-_.]?(?:\d+x\d+|img|image|px|gif|png))?$", re.IGNORECASE)


@dataclass(frozen=True)
class SizeHint:
    """What a URL says about the size of its rendition."""

    width: float | None = None  # from a width token (strong: /w/769/, ?sw=1800, _800x1000)
    named: int = 0  # 1 thumb .. 4 zoom/original
    density: float | None = None  # @2x
    weak_width: float | None = None  # a bare number (_500_), maybe a size, maybe an id


def _int(value: str) -> float | None:
    m = re.match(r"^\s*(\d{1,5})(?:\.\d+)?\s*(?:px)?\s*$", value or "")
    return float(m.group(1)) if m else None


def _split_stem(name: str) -> tuple[str, str]:
    m = _EXT.search(name)
    return (name[: m.start()], name[m.start() + 1:].lower()) if m else (name, "")


def url_size(url: str) -> SizeHint:
    """The size tokens of ``url``: query parameters, path segments and file-name tokens."""
    parts = urlsplit(url)
    width = weak = None
    named = 0
    density = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        k = key.lower()
        if k in _WIDTH_PARAMS:
            m = _SEG_WXH.match(value)
            width = float(m.group(1)) if m else (_int(value) or width)
    segments = [s for s in parts.path.split("/") if s]
    for i, seg in enumerate(segments[:-1]):
        word = _SIZE_WORDS.get(seg.lower())
        if word == "w" and _int(segments[i + 1]) is not None:
            width = _int(segments[i + 1])
        m_wxh, m_w = _SEG_WXH.match(seg), _SEG_W.match(seg)
        if m_wxh:
            width = float(m_wxh.group(1))
        elif m_w:
            width = float(m_w.group(1) or m_w.group(2))
        elif _SEG_TRANSFORM.match(seg) and (tw := _TRANSFORM_W.search(seg)):
            width = float(tw.group(1))
    stem, _ext = _split_stem(segments[-1] if segments else "")
    if m := _STEM_DENSITY.search(stem):
        density = float(m.group(1))
    if m := _STEM_WXH.search(stem):
        width = width or float(m.group(1))
    if m := _STEM_W.search(stem):
        width = width or float(m.group(1) or m.group(2))
    for m in _STEM_NAMED.finditer(stem):
        named = max(named, NAMED_SIZES[m.group(1).lower()])
    if width is None and (m := _STEM_BARE.search(stem)) and 40 <= int(m.group(1)) <= 4000:
        weak = float(m.group(1))
    return SizeHint(width=width, named=named, density=density, weak_width=weak)


def version_key(url: str) -> str:
    """``url`` without its size tokens: two URLs with one key are renditions of one photo.

    Removed: rendition query parameters (width, height, quality, format, fit ...), size path
    segments (``/w/769/``, ``/800x1000/``, ``/w_640,h_480,c_fill/``), file-name size tokens
    (``_800x1000``, ``-800w``, ``_small``, ``_zoom``, ``@2x``) and the extension. A bare number
    (``_500_``) stays: it may be a product number; such renditions meet by difference hash once
    fetched instead.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/")]
    kept: list[str] = []
    skip_next = False
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if skip_next:
            skip_next = False
            continue
        if not last:
            if _SIZE_WORDS.get(seg.lower()) and i + 1 < len(segments) - 1 and _int(segments[i + 1]) is not None:
                skip_next = True
                continue
            if _SEG_WXH.match(seg) or _SEG_W.match(seg) or _SEG_TRANSFORM.match(seg):
                continue
            kept.append(seg)
            continue
        stem, _ext = _split_stem(seg)
        stem = _STEM_DENSITY.sub("", stem)
        stem = _STEM_WXH.sub("", stem)
        stem = _STEM_W.sub("", stem)
        stem = _STEM_NAMED.sub("", stem)
        kept.append(stem.lower())
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                             if k.lower() not in _RENDER_PARAMS))
    return urlunsplit((parts.scheme, parts.netloc, "/".join(kept), query, ""))


def is_placeholder(url: str, width: float | None = None, height: float | None = None) -> bool:
    """A lazy loader's stand-in: a ``trans.gif``-style name, or a declared 1x1 (or smaller) size."""
    if width is not None and height is not None and width <= 1 and height <= 1:
        return True
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    stem, _ = _split_stem(name)
    return bool(_PLACEHOLDER_STEM.match(stem))


# --- candidates and groups -----------------------------------------------------------------------

# how much a source is trusted to point at the full-size photo, for ties
VIA_RANK = {"jsonld": 9, "image_src": 8, "anchor": 8, "interaction": 8, "data_attr": 7, "srcset": 6, "lazy": 5,
            "source": 4, "meta": 3, "src": 3, "state": 2, "css": 1, "sitemap": 1}
_LOGO_NAME = re.compile(r"(?:^|[^a-z])(logos?|icons?|sprites?|favicon|badges?|payments?|social|arrows?|chevron|"
                        r"spinner)(?:[^a-z]|$)", re.IGNORECASE)
_LOGO_HINT = re.compile(r"(?:^|[^a-z])(logos?|icons?|sprites?|favicon|badges?)(?:[^a-z]|$)", re.IGNORECASE)
NAVIGATION = "image.in_navigation"
LOGO = "image.logo_or_icon"
BANNER = "image.banner_shape"
TINY = "image.tiny_rendered"
SMALLER_VERSION = "image.smaller_version"
PLACEHOLDER = "image.placeholder"
STATE_LIMIT = "image.state_limit"


@dataclass
class Candidate:
    """One URL of a photo, where it was found and what the page said about it."""

    url: str
    via: str
    element: int | None = None  # index of its <img> (versions of one element are one photo)
    declared_width: float | None = None  # srcset w descriptor, JSON-LD width
    declared_height: float | None = None
    density: float | None = None
    landmark: str | None = None  # nav / header / footer / menu / navigation ... around it
    box: tuple[float, float] | None = None  # rendered width, height (CSS px)
    hint: str = ""  # class, id and alt text, lowercased
    order: int = 0  # position on the page

    @cached_property
    def size(self) -> SizeHint:
        return url_size(self.url)  # the URL is final once the candidate is grouped

    @property
    def width(self) -> float | None:
        """Declared width, else the URL's width token."""
        return self.declared_width or self.size.width

    @property
    def placeholder(self) -> bool:
        return is_placeholder(self.url, self.declared_width, self.declared_height)

    def sort_key(self) -> tuple[float, ...]:
        hint = self.size
        width = self.width or hint.weak_width or -1.0
        density = self.density or hint.density or 1.0
        return (0.0 if self.placeholder else 1.0, width, float(hint.named), density,
                float(VIA_RANK.get(self.via, 0)), -float(self.order))

    def junk(self, *, max_aspect: float, min_rendered: float) -> str | None:
        """Why this candidate is page furniture rather than a photo, or None."""
        if self.placeholder:
            return PLACEHOLDER
        if self.landmark:
            return NAVIGATION
        name = urlsplit(self.url).path.rsplit("/", 1)[-1]
        if _LOGO_NAME.search(_split_stem(name)[0]) or _LOGO_HINT.search(self.hint):
            return LOGO
        dims = [d for d in (self.box, (self.declared_width, self.declared_height)) if d and d[0] and d[1]]
        for w, h in dims:
            assert w is not None and h is not None
            if max(w, h) / min(w, h) >= max_aspect:
                return BANNER
        if self.box and self.box[0] and self.box[1] and max(self.box) < min_rendered and not self.width:
            return TINY
        return None


@dataclass
class ImageGroup:
    """The versions of one photo found on a page, best first, and whether it is kept."""

    members: list[Candidate]
    junk: str | None = None  # every member is furniture: the reason of the best one
    needs_head: bool = False  # members that cannot be ordered by width: order by Content-Length

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def best(self) -> Candidate:
        return self.members[0]

    def as_state(self) -> dict[str, Any]:
        """JSON for the crawl checkpoint."""
        return {"urls": self.urls, "widths": [m.width for m in self.members], "vias": [m.via for m in self.members],
                "junk": self.junk, "head": self.needs_head}


def _jsonld_images(text: str) -> list[tuple[str, float | None, float | None]]:
    """(url, width, height) of every image a JSON-LD block names: ``image`` (a URL, a list, an
    ``ImageObject``), and ``ImageObject`` s' ``contentUrl`` / ``url``."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    out: list[tuple[str, float | None, float | None]] = []

    def dim(value: Any) -> float | None:
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return _int(value) if isinstance(value, str) else None

    def walk(node: Any, depth: int, image_field: bool) -> None:
        if depth > 12:
            return
        if isinstance(node, list):
            for item in node[:200]:
                walk(item, depth + 1, image_field)
        elif isinstance(node, str):
            if image_field:
                out.append((node, None, None))
        elif isinstance(node, dict):
            kind = node.get("@type")
            kinds = kind if isinstance(kind, list) else [kind]
            if "ImageObject" in kinds or image_field:
                for key in ("contentUrl", "url"):
                    if isinstance(node.get(key), str):
                        out.append((node[key], dim(node.get("width")), dim(node.get("height"))))
                        break
            for key, value in node.items():
                if key in ("image", "images", "photo", "primaryImageOfPage"):
                    walk(value, depth + 1, True)
                elif isinstance(value, dict | list) and key not in ("thumbnailUrl", "logo", "brand", "publisher"):
                    walk(value, depth + 1, False)

    walk(data, 0, False)
    return out


_STATE_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.\-\[\]:]+/[^\s"'<>\\(){}|^`]*|(?<=["'])/[^\s"'<>\\(){}|^`]+(?=["'])""")


def state_image_urls(text: str) -> list[str]:
    """Image URLs named anywhere in a script's text (embedded state JSON, ``window.__STATE__``):
    absolute or root-relative strings whose path ends in an image extension; ``\\/`` and
    ``\\u002F`` escapes undone."""
    text = text.replace("\\/", "/").replace("\\u002F", "/").replace("\\u002f", "/")
    out = []
    for m in _STATE_URL.finditer(text):
        url = m.group(0)
        if _EXT.search(urlsplit(url if not url.startswith("//") else "http:" + url).path):
            out.append(url)
    return out


def _box(rec: dict[str, Any]) -> tuple[float, float] | None:
    box = rec.get("box")
    if isinstance(box, list | tuple) and len(box) == 2:
        return float(box[0] or 0), float(box[1] or 0)
    return None


def page_candidates(data: dict[str, Any], base: str, *, keep_state_url: Callable[[str], bool] | None = None
                    ) -> list[Candidate]:
    """Every image URL the extraction script found (see the module docstring), absolute and
    normalised, with its source and context, in page order (one candidate per URL: the first
    seen keeps its context; a later declared width fills a missing one)."""
    raw: list[Candidate] = []

    def add(url: str | None, via: str, **kw: Any) -> None:
        if _usable(url):
            assert url is not None
            raw.append(Candidate(url=url.strip(), via=via, order=len(raw), **kw))

    for i, rec in enumerate(data.get("imgs") or []):
        ctx = {"element": i, "landmark": rec.get("landmark"), "box": _box(rec),
               "hint": (rec.get("hint") or "").lower()}
        declared_h = _int(str(rec.get("height_attr") or ""))
        declared_w = _int(str(rec.get("width_attr") or ""))
        tiny_attr = declared_w is not None and declared_h is not None and declared_w <= 1 and declared_h <= 1
        for value in rec.get("lazysets") or []:
            for c in parse_srcset(value):
                add(c.url, "srcset", declared_width=c.width, density=c.density, **ctx)
        for c in parse_srcset(rec.get("srcset")):
            add(c.url, "srcset", declared_width=c.width, density=c.density, **ctx)
        for url in rec.get("lazy") or []:
            add(url, "lazy", **ctx)
        for _name, value in rec.get("data") or []:
            for c in parse_srcset(value):
                add(c.url, "data_attr", declared_width=c.width, density=c.density, **ctx)
        for value in rec.get("sources") or []:
            for c in parse_srcset(value):
                add(c.url, "source", declared_width=c.width, density=c.density, **ctx)
        src = rec.get("src")
        if tiny_attr:  # <img src=x width=1 height=1>: a pixel, never a photo
            add(src, "src", declared_width=declared_w, declared_height=declared_h, **ctx)
        else:
            add(src, "src", **ctx)
    for text in data.get("ldjson") or []:
        for url, w, h in _jsonld_images(text):
            add(url, "jsonld", declared_width=w, declared_height=h)
    for url in data.get("image_src") or []:
        add(url, "image_src")
    for a in data.get("anchors") or []:
        img = a.get("img")
        add(a.get("url"), "anchor", element=img if isinstance(img, int) and img >= 0 else None,
            landmark=a.get("landmark"), hint=(a.get("hint") or "").lower())
    for d in data.get("data_attrs") or []:
        for c in parse_srcset(d.get("value")):
            add(c.url, d.get("via") or "data_attr", declared_width=c.width, density=c.density, landmark=d.get("landmark"),
                box=_box(d), hint=(d.get("hint") or "").lower())
    for s in data.get("singles") or []:
        if isinstance(s, str):
            add(s, "meta")
        else:
            add(s.get("url"), s.get("via") or "meta", landmark=s.get("landmark"), box=_box(s),
                hint=(s.get("hint") or "").lower())
    for value in data.get("interacted") or []:  # URLs a hover or click made the page set
        for c in parse_srcset(value):
            add(c.url, "interaction", declared_width=c.width, density=c.density)
    state: list[Candidate] = []
    for text in data.get("state") or []:
        for url in state_image_urls(text):
            state.append(Candidate(url=url, via="state"))
    out: dict[str, Candidate] = {}
    for cand in raw + state:
        norm = normalize_url(cand.url, base)
        if norm is None or (cand.via == "state" and keep_state_url is not None and not keep_state_url(norm)):
            continue
        cand.url = norm
        if norm in out:
            first = out[norm]
            if first.declared_width is None and cand.declared_width is not None:
                first.declared_width, first.declared_height = cand.declared_width, cand.declared_height
            if first.element is None and cand.element is not None:
                first.element = cand.element
            if first.landmark and not cand.landmark and cand.via != "state":  # also in the page's content
                first.landmark = None
            if VIA_RANK.get(cand.via, 0) > VIA_RANK.get(first.via, 0):
                first.via = cand.via
            continue
        cand.order = len(out)
        out[norm] = cand
    return list(out.values())


def group_versions(cands: list[Candidate], *, max_aspect: float = 3.0, min_rendered: float = 40.0,
                   max_state_photos: int | None = None, skip_furniture: bool = True) -> list[ImageGroup]:
    """Group the candidates into photos (same element, or same :func:`version_key`), best version
    first, in page order of their first member.

    A state script often names every image of the shop (recommendations, other colours, the
    menu): its URLs join the photos the page shows as their versions freely, but photos named
    *only* there are kept up to ``max_state_photos`` (the first ones; the rest are marked
    ``image.state_limit``). With ``skip_furniture`` off only placeholders and that bound mark a
    group (``scrape.skip_page_furniture``)."""
    parent = list(range(len(cands)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    by_key: dict[str, int] = {}
    by_element: dict[int, int] = {}
    for i, c in enumerate(cands):
        key = version_key(c.url)
        if key in by_key:
            union(i, by_key[key])
        else:
            by_key[key] = i
        if c.element is not None:
            if c.element in by_element:
                union(i, by_element[c.element])
            else:
                by_element[c.element] = i
    groups: dict[int, list[Candidate]] = {}
    for i, c in enumerate(cands):
        groups.setdefault(find(i), []).append(c)
    out = []
    for root in sorted(groups):
        members = sorted(groups[root], key=lambda c: c.sort_key(), reverse=True)
        # state JSON names menu teasers as readily as gallery photos: only the page's own
        # markup tells furniture apart, so a group is furniture when all its other members are
        seen = [m for m in members if m.via != "state"]
        reasons = [m.junk(max_aspect=max_aspect, min_rendered=min_rendered) for m in seen]
        real = [m for m in members if not m.placeholder]
        junk = next((r for r in reasons if r != PLACEHOLDER), reasons[0]) if reasons and all(reasons) else None
        if (junk == PLACEHOLDER and real) or (junk != PLACEHOLDER and not skip_furniture):
            junk = None
        if not seen and junk is None and max_state_photos is not None:
            if max_state_photos <= 0:
                junk = STATE_LIMIT
            max_state_photos -= 1
        out.append(ImageGroup(members=members, junk=junk, needs_head=junk is None and _unordered(real)))
    return out


FULL_SIZE_SOURCES = ("jsonld", "image_src", "anchor", "interaction")  # places that point at the full size


def _unordered(real: list[Candidate]) -> bool:
    """Whether a HEAD request must order these versions: the best two tie on every size clue,
    or a source that points at the full size (a zoom link, JSON-LD) declares no width while
    another version does (its width says nothing about the full size's)."""
    if len(real) < 2:
        return False
    first, second = (m.sort_key()[1:4] for m in real[:2])
    if first == second:
        return True
    return any(m.width is None and m.via in FULL_SIZE_SOURCES for m in real) and any(m.width for m in real)
