"""The site file: a YAML hierarchy of categories and sites, validated with pydantic, with
errors that name the key and its line:column, and weighted, seeded sampling.

See "Site file" in ARCHITECTURE.md for the format.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from worker_scrape.errors import SiteError
from worker_scrape.urls import Matcher, compile_rule

Role = Literal["person", "garment", "character"]
Loc = tuple[str | int, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_regex(pattern: str) -> str:
    compile_rule(pattern)  # RE2: a pattern it cannot compile is refused at load, not at crawl
    return pattern


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return url


def _check_host(host: str) -> str:
    parts = urlsplit(f"http://{host}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{host!r} has a bad port") from None
    if not parts.hostname or parts.netloc != host or parts.path or "@" in host:
        raise ValueError(f"{host!r} is not a host or host:port (no scheme, no path)")
    return host.lower()


Regex = Annotated[str, AfterValidator(_check_regex)]
HostStr = Annotated[str, AfterValidator(_check_host)]
HttpUrlStr = Annotated[str, AfterValidator(_check_http_url)]


class RoleRule(_Model):
    """``{role, match}``: images whose URL (or, failing that, whose page URL) matches
    ``match`` (``re.search``) get ``role``."""

    role: Role
    match: Regex


class Interaction(_Model):
    """Hover or click a gallery's thumbnails after load so a zoom viewer sets its large images'
    URLs (read from the page as it changes); bounded in elements and seconds."""

    selector: str = Field(min_length=1, max_length=500)  # CSS selector of the thumbnails
    action: Literal["hover", "click"] = "hover"
    max_elements: int = Field(default=20, ge=1, le=200)
    max_seconds: float = Field(default=10.0, gt=0, le=60, allow_inf_nan=False)


class Site(_Model):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    start_urls: list[HttpUrlStr] = Field(min_length=1)
    allow: list[Regex] = Field(default_factory=list)
    deny: list[Regex] = Field(default_factory=list)
    max_depth: int = Field(default=3, ge=0)
    max_pages: int = Field(default=100, ge=1)
    delay_s: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    roles: list[RoleRule] = Field(default_factory=list)
    default_role: Role | None = None
    roles_from_image: bool = True  # no rule matched: a detected face makes a person photo, none a garment
    interact: Interaction | None = None
    licence: str | None = None
    hosts: list[HostStr] = Field(default_factory=list)  # more hosts of the site (image/script CDNs), host[:port]

    @cached_property
    def allow_re(self) -> list[Matcher]:
        return [compile_rule(p) for p in self.allow]

    @cached_property
    def deny_re(self) -> list[Matcher]:
        return [compile_rule(p) for p in self.deny]

    @cached_property
    def role_res(self) -> list[tuple[Role, Matcher]]:
        return [(r.role, compile_rule(r.match)) for r in self.roles]

    def matching_rule(self, image_url: str, page_url: str) -> tuple[RoleRule, str] | None:
        """The first rule matching the image URL, else the first matching the page URL, and
        which of the two it matched (``image_url`` / ``page_url``); None when none does."""
        for where, url in (("image_url", image_url), ("page_url", page_url)):
            for rule, (_role, rx) in zip(self.roles, self.role_res, strict=True):
                if rx.search(url):
                    return rule, where
        return None

    def role_for(self, image_url: str, page_url: str) -> Role | None:
        """The role by the URL rules alone: the matching rule's, else ``default_role`` (None:
        the image is skipped). :mod:`worker_scrape.roles` also looks at the image."""
        found = self.matching_rule(image_url, page_url)
        return found[0].role if found else self.default_role


class Category(_Model):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    sites: list[Site] = Field(min_length=1)


class SiteFile(_Model):
    categories: list[Category] = Field(min_length=1)
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        """Where the file was read from (for messages and provenance)."""
        return self._source

    @model_validator(mode="after")
    def _unique_names(self) -> SiteFile:
        cats = [c.name for c in self.categories]
        sites = [s.name for c in self.categories for s in c.sites]
        for kind, names in (("category", cats), ("site", sites)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dup)}")
        return self

    def iter_sites(self) -> Iterator[tuple[Category, Site]]:
        for cat in self.categories:
            for site in cat.sites:
                yield cat, site

    def site(self, name: str) -> tuple[Category, Site]:
        for cat, site in self.iter_sites():
            if site.name == name:
                return cat, site
        raise KeyError(name)


# --- YAML with positions -------------------------------------------------------------


class _Marks:
    """Positions of YAML nodes, keyed by pydantic-style ``loc`` paths."""

    def __init__(self) -> None:
        self.value: dict[Loc, tuple[int, int]] = {}
        self.key: dict[Loc, tuple[int, int]] = {}
        self.duplicates: list[tuple[Loc, tuple[int, int]]] = []

    def walk(self, node: yaml.Node, loc: Loc = ()) -> None:
        self.value[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
                pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if key in seen:
                    self.duplicates.append((loc + (key,), pos))
                seen.add(key)
                self.key[loc + (key,)] = pos
                self.walk(value_node, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, loc + (i,))

    def find(self, loc: Loc, prefer_key: bool) -> tuple[int, int] | None:
        if prefer_key and loc in self.key:
            return self.key[loc]
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.value:
                return self.value[loc[:n]]
        return None


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_KNOWN_KEYS: dict[str, set[str]] = {
    "": set(SiteFile.model_fields),
    "categories": set(Category.model_fields),
    "sites": set(Site.model_fields),
    "roles": set(RoleRule.model_fields),
}


def _suggest(loc: Loc) -> str:
    parent = next((p for p in reversed(loc[:-1]) if isinstance(p, str)), "")
    close = difflib.get_close_matches(str(loc[-1]), _KNOWN_KEYS.get(parent, set()), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _site_named(data: Any, loc: Loc) -> str:
    """`` (site 'name')`` for an error inside a site entry that has a name, else ``""``."""
    if len(loc) < 5 or loc[0] != "categories" or loc[2] != "sites" or loc[4] == "name":
        return ""
    try:
        name = data["categories"][loc[1]]["sites"][loc[3]]["name"]
    except (KeyError, IndexError, TypeError):
        return ""
    return f" (site {name!r})" if isinstance(name, str) else ""


def _format_error(source: str, marks: _Marks, err: ErrorDetails, data: Any = None) -> str:
    loc: Loc = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))
    )
    kind = err["type"]
    pos = marks.find(loc, prefer_key=kind == "extra_forbidden")
    where = f"{source}:{pos[0]}:{pos[1]}" if pos else source
    site = _site_named(data, loc)
    if kind == "extra_forbidden":
        return f"{where}: unknown key {loc[-1]!r} at {_dotted(loc)}{_suggest(loc)}{site}"
    if kind == "missing":
        return f"{where}: missing required key {loc[-1]!r} at {_dotted(loc)}{site}"
    msg = err["msg"].removeprefix("Value error, ")
    shown = "" if kind == "value_error" else f" (got {err.get('input')!r})"
    return f"{where}: {_dotted(loc)}: {msg}{shown}{site}"


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases (``*name``): a site file never needs them, and nested
    ones expand exponentially (a few hundred bytes could fill the memory) before validation."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise _AliasRefused(f":{mark.line + 1}:{mark.column + 1}: YAML aliases are not allowed in a site "
                                f"file (*{str(event.anchor)[:50]}); write the value out")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


class _AliasRefused(Exception):
    """Raised by :class:`_NoAliasLoader`; the message starts with ``:line:column``."""


def parse_sites(text: str, source: str = "<string>") -> SiteFile:
    """Validate site-file YAML text; ``source`` names it in error messages. Anything that is not
    a valid site file raises :class:`SiteError` (aliases: code ``sites.yaml_alias``)."""
    try:
        return _parse_sites(text, source)
    except RecursionError:
        raise SiteError(f"{source}: invalid YAML: nested too deeply", code="sites.too_deep") from None


def _parse_sites(text: str, source: str) -> SiteFile:
    loader: _NoAliasLoader | None = None
    try:
        loader = _NoAliasLoader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            raise SiteError(f"{source}: the site file is empty")
        data = loader.construct_document(node)
    except _AliasRefused as exc:
        raise SiteError(f"{source}{exc}", code="sites.yaml_alias") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SiteError(f"{source}{pos}: invalid YAML: {exc.problem or exc}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date such as 2024-13-45
        raise SiteError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None  # one line
    finally:
        if loader is not None:
            loader.dispose()
    marks = _Marks()
    marks.walk(node)
    errors = [
        f"{source}:{line}:{col}: duplicate key {loc[-1]!r} at {_dotted(loc)}"
        for loc, (line, col) in marks.duplicates
    ]
    if not isinstance(data, dict):
        errors.append(f"{source}:1:1: the site file must be a mapping with a 'categories' key")
    elif not errors:
        try:
            site_file = SiteFile.model_validate(data)
            site_file._source = source
            return site_file
        except ValidationError as exc:
            # unknown keys first (they usually explain a "missing" one), then file order
            found = sorted(
                exc.errors(),
                key=lambda e: (
                    e["type"] != "extra_forbidden",
                    marks.find(tuple(e["loc"]), e["type"] == "extra_forbidden") or (0, 0),
                ),
            )
            errors.extend(_format_error(source, marks, e, data) for e in found)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SiteError(errors[0] + more, errors)


def load_sites(path: str | Path) -> SiteFile:
    """Read and validate a site file. Raises :class:`SiteError` with ``file:line:col``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError(f"{path}: cannot read site file: {exc.strerror or exc}") from None
    return parse_sites(text, str(path))


def sample_sites(
    site_file: SiteFile, n: int, seed: int | None = None
) -> list[tuple[Category, Site]]:
    """``n`` draws (with replacement): a category by weight, then one of its sites by weight.
    The same ``seed`` gives the same list."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    cats = site_file.categories
    cat_weights = [c.weight for c in cats]
    out: list[tuple[Category, Site]] = []
    for _ in range(n):
        cat = rng.choices(cats, weights=cat_weights, k=1)[0]
        site = rng.choices(cat.sites, weights=[s.weight for s in cat.sites], k=1)[0]
        out.append((cat, site))
    return out


def example_sites_path() -> Path:
    """Path of the shipped example site file."""
    return Path(__file__).with_name("examples") / "sites.yaml"
