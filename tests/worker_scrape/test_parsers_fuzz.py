"""Property-based tests of the parsers that read what sites send or what people write: robots.txt,
sitemaps, URLs and their rules, the site file. Whatever comes in, out comes a result or the
project's typed refusal, never another exception, and quickly (each example within its
hypothesis ``deadline``)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker_scrape.errors import SiteError
from worker_scrape.robots import RobotsEntry, parse_robots
from worker_scrape.sitemaps import SitemapFile, read_sitemap_xml
from worker_scrape.sites import SiteFile, parse_sites
from worker_scrape.urls import (
    TrapGuard,
    host_key,
    is_same_site,
    normalize_url,
    path_allowed,
    site_hosts,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))  # per test; raise it for a deeper search
fuzz = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=1), database=None,
                suppress_health_check=[HealthCheck.too_slow])

BASE = "https://shop.example/sitemap.xml"
UA = "synthpipe"

# --- robots.txt --------------------------------------------------------------------------------

ROBOTS_LINES = st.sampled_from([
    "User-agent: *", "User-agent: synthpipe", "User-agent:", "Disallow: /", "Disallow:", "Allow: /a$",
    "Disallow: /*?*", "Disallow: *.gif$", "Crawl-delay: 2.5", "Crawl-delay: -1", "Crawl-delay: nan",
    "Crawl-delay: 1e400", "Request-rate: 1/0", "Sitemap: /s.xml", "Sitemap: http://[::1", "# comment",
    "Disallow: /%zz", "Allow: /\u00e9\u00e8", "Disallow: /" + "*" * 300, "\ufeffUser-agent: *", "\x00",
])
ROBOTS = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.one_of(ROBOTS_LINES, st.text(max_size=40)), max_size=40).map(lambda ls: "\n".join(ls).encode()),
)
PATHS = st.one_of(st.sampled_from(["/", "/a", "/a.gif", "/x?y=1", "/%C3%A9", "/" + "a*" * 50]),
                  st.text(max_size=200).map(lambda t: "/" + t))


@fuzz
@given(body=ROBOTS, path=PATHS)
def test_robots_txt_of_any_bytes_gives_rules_that_answer(body: bytes, path: str) -> None:
    entry = parse_robots(body)
    assert isinstance(entry, RobotsEntry) and entry.status == "ok"
    url = normalize_url(path, "https://shop.example/") or "https://shop.example/"
    assert isinstance(entry.can_fetch(UA, url), bool)
    delay = entry.crawl_delay(UA)
    assert delay is None or isinstance(delay, float)
    assert all(isinstance(s, str) for s in entry.sitemaps)


# --- sitemaps ----------------------------------------------------------------------------------

XML_PARTS = st.sampled_from([
    '<?xml version="1.0" encoding="UTF-8"?>', '<?xml version="1.0" encoding="x-unknown"?>',
    '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">',
    "</urlset>", "<sitemapindex>", "</sitemapindex>", "<sitemap>", "</sitemap>", "<url>", "</url>", "<loc>",
    "</loc>", "<image:image>", "</image:image>", "<image:loc>", "</image:loc>", "<foo:bar>", "/p/1",
    "https://shop.example/p?b=2&amp;a=1", "http://[::1", "javascript:alert(1)", "&nbsp;", "&#0;", "&#x110000;",
    "<!DOCTYPE urlset>", '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>', "&a;", "<![CDATA[/c]]>", "<!-- c -->",
    "\x00", "\ufeff", "<html>", "<br>", "</p>",
])
SITEMAPS = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(XML_PARTS, st.text(max_size=20)), max_size=60).map(lambda ps: "".join(ps).encode()),
    st.lists(XML_PARTS, max_size=60).map(lambda ps: "".join(ps).encode("utf-16")),
)


@fuzz
@given(body=SITEMAPS)
def test_sitemap_of_any_bytes_gives_entries_or_a_reason_code(body: bytes) -> None:
    parsed = read_sitemap_xml(body, BASE)
    assert isinstance(parsed, SitemapFile)
    assert parsed.error in (None, "sitemap.malformed")
    for url in parsed.children + [e.page_url for e in parsed.entries] + [i for e in parsed.entries for i in e.images]:
        assert normalize_url(url) == url  # every URL out is a normalised http(s) one


# --- URLs and the site's rules -----------------------------------------------------------------

URL_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "//", "[", "]", "::1", "@", ":", ":99999",
                              ":-1", "%", "%zz", "%2F", "/", "..", ".", "?", "&", "=", "#", "shop.example", "xn--",
                              "\u00e9", "\x00", " ", "\t", "a" * 50, "www."]), max_size=30).map("".join),
)


@fuzz
@given(url=URL_TEXT, base=st.one_of(st.none(), URL_TEXT))
def test_any_url_text_normalises_to_a_url_or_none_and_meets_the_guards(url: str, base: str | None) -> None:
    out = normalize_url(url, base)
    if out is None:
        return
    assert normalize_url(out) == out  # normalising is idempotent
    key = host_key(out)
    assert key and is_same_site(out, site_hosts([out]))
    reason = TrapGuard().check(out)
    assert reason is None or isinstance(reason, str)


PATTERN_PARTS = st.sampled_from(["(a+)+$", "(a|a)*", "^", "$", ".*", "\\d", "\\1", "(?=x)", "(?<!x)", "(?P<n>a)",
                                 "[", "]", "(", ")", "{1001}", "{2,}", "*", "+", "?", "|", "\\", "\\p{L}", "a", "/"])
PATTERNS = st.one_of(st.text(max_size=40), st.lists(PATTERN_PARTS, max_size=12).map("".join))
RULES_YAML = """categories:
  - name: c
    sites:
      - name: s
        start_urls: ["https://shop.example/"]
        allow: [{allow}]
        deny: [{deny}]
"""


def _yaml_string(text: str) -> str:
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in text)
    return f'"{escaped}"'


@fuzz
@given(allow=PATTERNS, deny=PATTERNS, path=PATHS)
def test_any_allow_deny_rule_is_refused_at_load_or_matches_any_path(allow: str, deny: str, path: str) -> None:
    text = RULES_YAML.format(allow=_yaml_string(allow), deny=_yaml_string(deny))
    try:
        site = parse_sites(text, "rules.yaml").site("s")[1]
    except SiteError as exc:
        assert str(exc).startswith("rules.yaml:") and exc.code == "sites.invalid"
        return
    url = normalize_url(path, "https://shop.example/") or "https://shop.example/"
    assert isinstance(path_allowed(url, site.allow_re, site.deny_re), bool)
    assert site.role_for(url + "a" * 500, url) is None


# --- the site file -----------------------------------------------------------------------------

SITE_KEYS = ["name", "weight", "start_urls", "allow", "deny", "max_depth", "max_pages", "delay_s", "roles",
             "default_role", "licence", "hosts", "categories", "sites", "role", "match", "bogus"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(), st.text(max_size=20),
                    st.sampled_from(["https://shop.example/", "person", "127.0.0.1:8080", "(a+)+$", "2024-13-45"]))
TREES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(st.sampled_from(SITE_KEYS), kids, max_size=5)),
                     max_leaves=25)
YAML_PARTS = st.sampled_from(["categories:", "\n", "  ", "- ", "name: a", "sites:", "start_urls: [http://x/]", "&a ",
                              "*a", "<<: *a", "!!python/object:os.system", "!!binary x", "? [1]\n: 2", "{", "}",
                              "[", "]", "'", '"', "\t", "%YAML 1.1\n---", "...", "2024-13-45", "\x00", "\ufeff"])
SITE_TEXT = st.one_of(
    st.text(max_size=500),
    st.lists(YAML_PARTS, max_size=40).map("".join),
    TREES.map(json.dumps),  # JSON is YAML
)


@fuzz
@given(text=SITE_TEXT)
def test_any_site_file_text_loads_or_is_refused_with_a_site_error(text: str) -> None:
    try:
        loaded = parse_sites(text, "sites.yaml")
    except SiteError as exc:
        assert str(exc).startswith("sites.yaml") and exc.code.startswith("sites.")
        assert "\n" not in str(exc)
        return
    assert isinstance(loaded, SiteFile) and loaded.categories
