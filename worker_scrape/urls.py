"""URL normalisation, same-site checks, allow/deny rules and link-trap bounds.

The site file's patterns (allow, deny, role rules) are matched with RE2 (``google-re2``), in time
linear in the URL: a pattern with nested quantifiers (``^(a+)+$``) cannot hang the crawler on a
path the site chooses. RE2 has no backreferences or lookaround; such a pattern is refused when the
site file is loaded.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

from common.core.errors import ConfigError

DEFAULT_PORTS = {"http": 80, "https": 443}
_PCT = re.compile(r"%[0-9a-fA-F]{2}")


def _clean_path(path: str) -> str:
    """Uppercase percent escapes and remove dot segments; an empty path becomes ``/``."""
    path = _PCT.sub(lambda m: m.group(0).upper(), path) or "/"
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == len(segments) - 1:
                out.append("")
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")
            continue
        out.append(seg)
    cleaned = "/".join(out)
    return cleaned if cleaned.startswith("/") else "/" + cleaned


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Canonical form of ``url`` (resolved against ``base``), or None when it is not an
    http(s) URL with a host.

    Lowercases scheme and host, strips the default port, drops the fragment and user info,
    removes dot segments, uppercases percent escapes and sorts query parameters (keeping
    blank values and repeated keys).
    """
    url = url.strip()
    if not url:
        return None
    try:
        if base:
            url = urljoin(base, url)
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host:  # "http://./": dots only
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    query = ""
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode(sorted(pairs), doseq=False, quote_via=quote)
    return urlunsplit((scheme, netloc, _clean_path(parts.path), query, ""))


def host_key(url: str) -> str:
    """``host[:port]`` of an URL as used for robots.txt, politeness and same-site checks."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    scheme = parts.scheme.lower()
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def _site_key(netloc: str) -> str:
    return netloc[4:] if netloc.startswith("www.") else netloc


def site_hosts(start_urls: Iterable[str]) -> frozenset[str]:
    """Hosts that count as "the site": those of the start URLs (``www.`` ignored)."""
    return frozenset(_site_key(host_key(u)) for u in start_urls)


def is_same_site(url: str, hosts: frozenset[str]) -> bool:
    """True when ``url``'s host (and port) is one of ``hosts`` (``www.`` ignored; http and
    https count as the same site)."""
    return _site_key(host_key(url)) in hosts


def url_path(url: str) -> str:
    """Path of ``url`` (``/`` when empty), the string allow/deny patterns are matched on."""
    return urlsplit(url).path or "/"


class Matcher(Protocol):
    """A compiled pattern: ``search`` as :meth:`re.Pattern.search` (an RE2 pattern or a ``re`` one)."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str, /) -> Any: ...


@cache
def _re2() -> tuple[Any, Any]:
    """The ``re2`` module and the options rules compile with (RE2 errors not logged to stderr)."""
    try:
        import re2
    except ModuleNotFoundError:
        raise ConfigError("site-file rules need the 'google-re2' package from the 'scrape' extra: "
                          "pip install 'synthpipe[scrape]'", code="install.missing_extra") from None
    options = re2.Options()
    options.log_errors = False
    return re2, options


def compile_rule(pattern: str) -> Matcher:
    """``pattern`` compiled for linear-time matching (RE2). Raises :class:`ValueError` naming the
    pattern when RE2 cannot compile it (a syntax error, a backreference, lookaround, a repeat
    count over 1000, a pattern too large)."""
    re2, options = _re2()
    try:
        return re2.compile(pattern, options)  # type: ignore[no-any-return]
    except re2.error as exc:
        why = exc.args[0] if exc.args else "cannot compile"
        why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
        raise ValueError(f"invalid regex {pattern!r}: {why} (rules are RE2: no backreferences "
                         "or lookaround)") from None


def path_allowed(url: str, allow: Sequence[Matcher], deny: Sequence[Matcher]) -> bool:
    """Allow/deny on the URL path: denied if any deny pattern matches; otherwise allowed if
    there are no allow patterns or one of them matches (``re.search``)."""
    path = url_path(url)
    if any(p.search(path) for p in deny):
        return False
    return not allow or any(p.search(path) for p in allow)


@dataclass(frozen=True)
class TrapLimits:
    """Bounds that stop crawler traps (endless calendars, ``/a/a/a/...``, session ids)."""

    max_url_length: int = 2048
    max_path_depth: int = 12
    max_segment_repeats: int = 3
    max_query_variants: int = 50


class TrapGuard:
    """Stateful link-trap check for one crawl: :meth:`check` returns a reason to skip an URL
    or None. Query variants are counted per ``host + path`` over the URLs accepted so far."""

    def __init__(self, limits: TrapLimits | None = None) -> None:
        self.limits = limits or TrapLimits()
        self._variants: dict[str, set[str]] = defaultdict(set)

    def check(self, url: str) -> str | None:
        lim = self.limits
        if len(url) > lim.max_url_length:
            return "url too long"
        parts = urlsplit(url)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if len(segments) > lim.max_path_depth:
            return "path too deep"
        counts: dict[str, int] = defaultdict(int)
        for seg in segments:
            counts[seg] += 1
            if counts[seg] > lim.max_segment_repeats:
                return "repeated path segment"
        if parts.query:
            key = f"{parts.netloc}{parts.path}"
            seen = self._variants[key]
            if parts.query not in seen:
                if len(seen) >= lim.max_query_variants:
                    return "too many query variants"
                seen.add(parts.query)
        return None
