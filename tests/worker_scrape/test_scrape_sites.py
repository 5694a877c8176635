"""Site file validation (errors name key and line:column) and weighted sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from worker_scrape.errors import SiteError
from worker_scrape.sites import example_sites_path, load_sites, parse_sites, sample_sites

GOOD = """\
categories:
  - name: retailer
    weight: 3
    sites:
      - name: shop-a
        weight: 1
        start_urls: ["https://shop-a.example/"]
        allow: ["^/(women|men)/"]
        deny: ["^/account"]
        max_depth: 3
        max_pages: 200
        delay_s: 1.0
        roles:
          - {role: person, match: "/model/|/look/"}
          - {role: garment, match: "/product/"}
        default_role: garment
        licence: "see site terms"
  - name: editorial
    weight: 1
    sites:
      - name: mag
        start_urls: ["http://mag.example/fashion/"]
"""


def _error(text: str, tmp_path: Path) -> SiteError:
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    with pytest.raises(SiteError) as info:
        load_sites(path)
    assert "\n" not in str(info.value)
    return info.value


def test_good_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(GOOD)
    site_file = load_sites(path)
    assert site_file.source == str(path)
    _cat, mag = site_file.site("mag")
    assert (mag.weight, mag.max_depth, mag.default_role, mag.allow) == (1.0, 3, None, [])
    _cat, shop = site_file.site("shop-a")
    assert (
        shop.role_for("https://shop-a.example/img/1.jpg", "https://shop-a.example/look/2")
        == "person"
    )
    assert (
        shop.role_for("https://shop-a.example/product/1.jpg", "https://shop-a.example/look/")
        == "garment"
    )
    assert shop.role_for("https://shop-a.example/x.jpg", "https://shop-a.example/") == "garment"
    assert mag.role_for("https://mag.example/x.jpg", "https://mag.example/") is None


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    err = _error(GOOD.replace("        licence:", "        license:"), tmp_path)
    assert str(err).startswith(f"{tmp_path / 'sites.yaml'}:17:9: unknown key 'license'")
    assert "categories[0].sites[0].license" in str(err) and "did you mean 'licence'" in str(err)


def test_unknown_top_level_and_role_keys(tmp_path: Path) -> None:
    err = _error(GOOD + "extra: 1\n", tmp_path)
    assert ":23:1: unknown key 'extra'" in str(err)
    err = _error(GOOD.replace("{role: person, match:", "{role: person, pattern:"), tmp_path)
    assert ":14:28: unknown key 'pattern'" in str(err)


def test_bad_regex_names_position(tmp_path: Path) -> None:
    err = _error(GOOD.replace('deny: ["^/account"]', 'deny: ["^/account", "(("]'), tmp_path)
    assert ":9:29: categories[0].sites[0].deny[1]: invalid regex '(('" in str(err)
    err = _error(GOOD.replace('"/product/"', '"/product/["'), tmp_path)
    assert ":15:36: categories[0].sites[0].roles[1].match: invalid regex" in str(err)


@pytest.mark.parametrize("weight", ["0", "-2", ".nan", "'heavy'", "true"])
def test_bad_weight(tmp_path: Path, weight: str) -> None:
    err = _error(GOOD.replace("    weight: 3", f"    weight: {weight}"), tmp_path)
    assert ":3:13: categories[0].weight:" in str(err)


def test_bad_values(tmp_path: Path) -> None:
    cases = {
        '["ftp://x.example/"]': ":7:22: categories[0].sites[0].start_urls[0]: 'ftp://x.example/' is not an http(s) URL",
        "[]": ":7:21: categories[0].sites[0].start_urls: List should have at least 1 item",
    }
    for value, expected in cases.items():
        err = _error(GOOD.replace('["https://shop-a.example/"]', value), tmp_path)
        assert expected in str(err)
    err = _error(GOOD.replace("role: person", "role: model"), tmp_path)
    assert (
        ":14:20: categories[0].sites[0].roles[0].role: Input should be 'person', 'garment' or 'character'"
        in str(err)
    )
    err = _error(GOOD.replace("delay_s: 1.0", "delay_s: -1"), tmp_path)
    assert ":12:18: categories[0].sites[0].delay_s:" in str(err)
    err = _error(GOOD.replace("      - name: mag\n", "      - weight: 2\n"), tmp_path)
    assert "missing required key 'name' at categories[1].sites[0].name" in str(err)


def test_duplicates_and_yaml_errors(tmp_path: Path) -> None:
    err = _error(GOOD.replace("name: mag", "name: shop-a"), tmp_path)
    assert "duplicate site name(s): shop-a" in str(err)
    err = _error(
        GOOD.replace("        max_depth: 3\n", "        max_depth: 3\n        max_depth: 4\n"),
        tmp_path,
    )
    assert ":11:9: duplicate key 'max_depth'" in str(err)
    err = _error("categories: [\n", tmp_path)
    assert "invalid YAML" in str(err) and ":2:1:" in str(err)
    err = _error("", tmp_path)
    assert "empty" in str(err)
    assert isinstance(err, ValueError)
    with pytest.raises(SiteError, match="cannot read"):
        load_sites(tmp_path / "nope.yaml")


def test_several_errors_are_all_kept(tmp_path: Path) -> None:
    err = _error(GOOD.replace("weight: 3", "weight: 0").replace("licence:", "license:"), tmp_path)
    assert len(err.errors) == 2 and "(and 1 more)" in str(err)


def test_example_file_has_the_six_kinds() -> None:
    site_file = load_sites(example_sites_path())
    names = {c.name for c in site_file.categories}
    assert names == {
        "retailer",
        "brand-lookbook",
        "stock-photography",
        "editorial",
        "street-style",
        "marketplace",
    }
    for _cat, site in site_file.iter_sites():
        assert all(u.split("/")[2].endswith(".example") for u in site.start_urls)


def test_sampling_is_reproducible_and_proportional() -> None:
    site_file = parse_sites(
        GOOD.replace("  - name: editorial\n    weight: 1", "  - name: editorial\n    weight: 1")
        + """      - name: mag2
        weight: 3
        start_urls: ["http://mag2.example/"]
"""
    )
    a = sample_sites(site_file, 200, seed=7)
    assert [s.name for _c, s in a] == [s.name for _c, s in sample_sites(site_file, 200, seed=7)]
    assert [s.name for _c, s in a] != [s.name for _c, s in sample_sites(site_file, 200, seed=8)]
    n = 20_000
    counts = Counter(s.name for _c, s in sample_sites(site_file, n, seed=1))
    # categories 3:1; within editorial, mag:mag2 = 1:3
    expected = {"shop-a": 0.75, "mag": 0.25 * 0.25, "mag2": 0.25 * 0.75}
    for name, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[name] / n - p) < 4 * sd, (name, counts[name] / n, p)
    assert sample_sites(site_file, 0, seed=1) == []


def test_extra_hosts_are_host_or_host_port(tmp_path: Path) -> None:
    good = parse_sites(GOOD.replace("max_depth: 3", 'max_depth: 3\n        hosts: ["CDN.shop-a.example", "127.0.0.2:8080"]'))
    assert good.site("shop-a")[1].hosts == ["cdn.shop-a.example", "127.0.0.2:8080"]
    for bad in ('"https://cdn.example/"', '"cdn.example/img"', '"cdn.example:99999"'):
        err = _error(GOOD.replace("max_depth: 3", f"max_depth: 3\n        hosts: [{bad}]"), tmp_path)
        assert "hosts" in str(err) and err.code == "sites.invalid"
