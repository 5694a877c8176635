"""Versions of one photo grouped and ordered, placeholders never winning, page furniture told
apart, JSON-LD and state JSON read (no browser), and a larger version replacing a stored smaller
one in the store unless the asset was already used."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from fixtures.shops import jpeg
from PIL import Image
from sqlalchemy import select

from common.devkit import samples
from worker_scrape.extract import (
    BANNER,
    LOGO,
    NAVIGATION,
    PLACEHOLDER,
    STATE_LIMIT,
    TINY,
    group_versions,
    page_candidates,
    state_image_urls,
    url_size,
    version_key,
)

BASE = "https://shop.example/p/1"


@pytest.mark.parametrize(("a", "b"), [
    ("https://s.example/w/156/img/a.jpg", "https://s.example/w/1800/img/a.jpg"),
    ("https://s.example/img/a_500x500.jpg", "https://s.example/img/a_1200x1200.jpg"),
    ("https://s.example/img/a.jpg?sw=300&sh=400", "https://s.example/img/a.jpg?sw=1800"),
    ("https://s.example/img/a.jpg?width=200&q=70", "https://s.example/img/a.webp?width=2000"),
    ("https://s.example/img/a_small.jpg", "https://s.example/img/a_zoom.jpg"),
    ("https://s.example/img/a.jpg", "https://s.example/img/a@2x.jpg"),
    ("https://s.example/w_640,h_480,c_fill/a.jpg", "https://s.example/w_1600/a.jpg"),
])
def test_renditions_share_a_version_key(a: str, b: str) -> None:
    assert version_key(a) == version_key(b)


@pytest.mark.parametrize(("a", "b"), [
    ("https://s.example/img/a.jpg", "https://s.example/img/b.jpg"),
    ("https://s.example/img/shirt_1001.jpg", "https://s.example/img/shirt_1002.jpg"),  # product numbers, not sizes
    ("https://s.example/img/a.jpg?id=1", "https://s.example/img/a.jpg?id=2"),
    ("https://s.example/img/a.jpg", "https://cdn.example/img/a.jpg"),
])
def test_different_photos_keep_different_keys(a: str, b: str) -> None:
    assert version_key(a) != version_key(b)


def test_url_size_reads_width_tokens() -> None:
    assert url_size("https://s.example/w/769/a.jpg").width == 769
    assert url_size("https://s.example/a.jpg?sw=1800").width == 1800
    assert url_size("https://s.example/a_800x1000.jpg").width == 800
    assert url_size("https://s.example/a-640w.jpg").width == 640
    assert url_size("https://s.example/a_zoom.jpg").named > url_size("https://s.example/a_thumb.jpg").named
    assert url_size("https://s.example/a_500_1.jpg").weak_width == 500 and url_size("https://s.example/a_500_1.jpg").width is None


def _groups(data: dict, **kw):  # type: ignore[no-untyped-def]
    return group_versions(page_candidates(data, BASE, **kw))


def test_srcset_and_lazy_attributes_of_one_img_are_one_photo_largest_first() -> None:
    [g] = _groups({"imgs": [{"src": "/i/a.jpg?w=100", "srcset": "/i/a.jpg?w=400 400w, /i/a.jpg?w=1600 1600w",
                              "data": [["data-zoom", "/z/other-name.jpg 2400w"]]}]})
    assert g.best.url == "https://shop.example/z/other-name.jpg" and len(g.members) == 4
    assert not g.needs_head and g.junk is None


def test_a_transparent_placeholder_in_picture_never_wins_the_tie() -> None:
    rec = {"src": "/img/trans.gif", "sources": ["/img/trans.gif"], "lazy": ["/img/real.jpg"]}
    [g] = _groups({"imgs": [rec]})
    assert g.best.url == "https://shop.example/img/real.jpg" and g.members[-1].placeholder
    # a 1x1 pixel declared by its attributes is a placeholder whatever its name
    [pix] = _groups({"imgs": [{"src": "/t/p.gif", "width_attr": "1", "height_attr": "1"}]})
    assert pix.junk == PLACEHOLDER


def test_jsonld_and_state_json_and_link_and_anchor_sources() -> None:
    ld = json.dumps({"@type": "Product", "image": [{"@type": "ImageObject", "contentUrl": "/full/a.jpg",
                                                    "width": {"@type": "QuantitativeValue", "value": 1920}},
                                                   "/full/b.jpg"],
                     "brand": {"logo": "/logo.png"}})
    state = 'window.__S={"m":[{"u":"https:\\/\\/shop.example\\/st\\/c.jpg"},{"u":"/st/d.png"},{"u":"https://evil.example/e.jpg"},{"u":"/not-an-image"}]}'
    data = {"ldjson": [ld, "{broken"], "state": [state], "image_src": ["/ls/f.jpg"],
            "anchors": [{"url": "https://shop.example/zoom/g.jpg", "img": 0}],
            "imgs": [{"src": "/thumbs/g.jpg"}]}
    cands = page_candidates(data, BASE, keep_state_url=lambda u: u.startswith("https://shop.example/"))
    by_url = {c.url.removeprefix("https://shop.example"): c for c in cands}
    assert set(by_url) == {"/full/a.jpg", "/full/b.jpg", "/st/c.jpg", "/st/d.png", "/ls/f.jpg", "/zoom/g.jpg",
                           "/thumbs/g.jpg"}
    assert by_url["/full/a.jpg"].declared_width == 1920 and by_url["/full/a.jpg"].via == "jsonld"
    assert state_image_urls(state)[0] == "https://shop.example/st/c.jpg"
    groups = group_versions(cands)
    zoom = next(g for g in groups if "https://shop.example/zoom/g.jpg" in g.urls)
    assert set(zoom.urls) == {"https://shop.example/zoom/g.jpg", "https://shop.example/thumbs/g.jpg"}
    assert zoom.needs_head  # neither declares a width: HEAD's Content-Length orders them


def test_photos_named_only_in_state_scripts_are_bounded_but_join_the_pages_photos_freely() -> None:
    state = "window.S=" + json.dumps({"all": [f"/st/p{i}.jpg" for i in range(50)] + ["/g/a.jpg?w=1800"]})
    groups = group_versions(page_candidates({"state": [state], "imgs": [{"src": "/g/a.jpg?w=200"}]}, BASE),
                            max_state_photos=3)
    shown = next(g for g in groups if g.best.url.endswith("/g/a.jpg?w=1800"))
    assert shown.junk is None and len(shown.members) == 2  # the state's 1800 px version of a shown photo
    assert [g.junk for g in groups if g is not shown].count(None) == 3
    assert [g.junk for g in groups if g is not shown].count(STATE_LIMIT) == 47


def test_furniture_is_told_apart_by_landmark_name_shape_and_rendered_size() -> None:
    imgs = [
        {"src": "/m/teaser.jpg", "landmark": "nav"},
        {"src": "/brand/logo.svg.png"},
        {"src": "/x/y.jpg", "hint": "site-logo header"},
        {"src": "/promo/strip.jpg", "box": [1200, 200]},
        {"src": "/ui/dot.jpg", "box": [20, 20]},
        {"src": "/p/photo.jpg", "box": [400, 600]},
        {"src": "/p/thumb.jpg", "box": [30, 40], "srcset": "/p/thumb.jpg 30w"},  # a declared width: not an icon
    ]
    junk = {g.best.url.removeprefix("https://shop.example"): g.junk for g in _groups({"imgs": imgs})}
    assert junk == {"/m/teaser.jpg": NAVIGATION, "/brand/logo.svg.png": LOGO, "/x/y.jpg": LOGO,
                    "/promo/strip.jpg": BANNER, "/ui/dot.jpg": TINY, "/p/photo.jpg": None, "/p/thumb.jpg": None}
    kept = {g.best.url.removeprefix("https://shop.example"): g.junk
            for g in group_versions(page_candidates({"imgs": imgs}, BASE), skip_furniture=False)}
    assert set(kept.values()) == {None}  # scrape.skip_page_furniture off: everything is taken
    # the same photo in the menu and in the page's content is content
    both = [{"src": "/p/a.jpg", "landmark": "nav"}, {"src": "/p/a.jpg"}]
    assert [g.junk for g in _groups({"imgs": both})] == [None]


# --- the store: a larger version replaces the smaller --------------------------------------------


def _register(session, storage, data: bytes, url: str):  # type: ignore[no-untyped-def]
    from common.core.settings import ImageSettings
    from common.media.assets import Provenance, register_image_bytes

    prov = Provenance(source_url=url, page_url="https://shop.example/p", site="shop",
                      fetched_at=dt.datetime.now(dt.UTC), role_evidence={"by": "detector", "faces": 0})
    return register_image_bytes(session, data, role="garment", provenance=prov, storage=storage,
                                limits=ImageSettings(), phash_threshold=4, prefer_larger=True)


def test_a_larger_version_replaces_the_stored_one_unless_it_was_already_analysed(db, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from common.domain.itemsets import ensure_item_set
    from common.store.rows import Asset, Edit
    from common.store.storage import Storage

    storage = Storage(str(tmp_path / "store"))
    photo = samples.garment(3, (600, 800))
    small, big = jpeg(photo.resize((120, 160), Image.Resampling.LANCZOS)), jpeg(photo)
    with db.session() as s:
        first = _register(s, storage, small, "https://shop.example/a.jpg?w=120")
        assert first.status == "registered"
        again = _register(s, storage, jpeg(photo.resize((100, 133))), "https://shop.example/a.jpg?w=100")
        assert (again.status, again.code) == ("near_duplicate", "image.near_duplicate")  # smaller: refused
        grown = _register(s, storage, big, "https://shop.example/a.jpg?w=600")
        assert (grown.status, grown.asset_id) == ("replaced", first.asset_id)
        s.commit()
        asset = s.get(Asset, first.asset_id)
        assert (asset.width, asset.height) == (600, 800) and asset.source_url.endswith("w=600")
        assert storage.get(asset.uri) == big
        assert [(v["url"][-5:], v["kept"]) for v in asset.versions] == [("w=120", False), ("w=600", True)]
        assert asset.role_evidence == {"by": "detector", "faces": 0}

        # once analysed, the asset's bytes stay; the larger URL is only recorded
        other = samples.garment(4, (600, 800))
        used = _register(s, storage, jpeg(other.resize((120, 160))), "https://shop.example/b.jpg?w=120")
        item_set = ensure_item_set(s, "t:b", "enrich", [(used.asset_id, "character")])
        s.add(Edit(item_set_id=item_set, origin="imported", backend="x", model_id="x", params={}, seed=0,
                   output_uri="x", output_sha256="0" * 64, width=1, height=1, timings={}))
        s.flush()
        late = _register(s, storage, jpeg(other), "https://shop.example/b.jpg?w=600")
        assert (late.status, late.code) == ("near_duplicate", "image.larger_version_too_late")
        kept = s.get(Asset, used.asset_id)
        assert kept.width == 120 and any(v["url"].endswith("w=600") and not v["kept"] for v in kept.versions)
        s.commit()
    with db.session() as s:
        assert s.scalar(select(Asset.width).where(Asset.id == used.asset_id)) == 120
