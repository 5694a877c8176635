"""Real shop pages' ways of hiding their full-size photos, written here and served on 127.0.0.1:
JSON-LD only, embedded state JSON, ``<link rel=image_src>``, zoom anchors, ``data-*`` srcsets, a
``<picture>`` with a transparent placeholder, a menu of teasers and a banner, a thumbnail seen a
page before its 1800 px version, a zoom viewer built only on hover, and a model photo told from a
product shot by the face detector. One crawl (``synthpipe crawl`` + ``run --stage scrape`` in
headless Chromium) and then, per page, which bytes the store holds."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.photos import photos
from fixtures.shops import jpeg
from fixtures.testsite import Response, SiteServer, page
from PIL import Image, ImageDraw
from sqlalchemy import select

from common.devkit import samples
from common.store.rows import Asset, Job

pytestmark = pytest.mark.browser

BIG, THUMB = (900, 1200), (120, 160)


def _photo(seed: int) -> Image.Image:
    """A distinct product shot (no face), large: a garment with large blocks of colour placed by
    the seed, so no two seeds look alike to the difference hash and a resize keeps its hash."""
    rng = random.Random(seed)
    im = samples.garment(seed, BIG)
    draw = ImageDraw.Draw(im)
    for _ in range(5):
        x, y = rng.randrange(0, BIG[0] - 300), rng.randrange(0, BIG[1] - 300)
        draw.rectangle([x, y, x + rng.randrange(150, 300), y + rng.randrange(150, 300)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def _versions(seed: int) -> tuple[bytes, bytes]:
    big = _photo(seed)
    return jpeg(big), jpeg(big.resize(THUMB, Image.Resampling.LANCZOS))


def _img(data: bytes) -> Response:
    return Response(200, data, "image/jpeg")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HOVER_SCRIPT = """<script>
document.querySelectorAll('.thumb').forEach(t => t.addEventListener('mouseover', () => {
  const z = document.getElementById('zoom');
  z.innerHTML = '<img src="/img/hv/' + t.id + '-large.jpg">';
}));
</script>"""


def _shop(server: SiteServer) -> dict[str, bytes]:
    """Route every page and image; return the bytes each check expects stored (by name)."""
    r = server.routes
    want: dict[str, bytes] = {}
    pages = ["jsonld", "state", "imagesrc", "zoom", "data", "picture", "menu", "thumb-first", "hover", "model"]
    r["/robots.txt"] = Response(200, b"User-agent: *\nAllow: /\n", "text/plain")
    r["/"] = page("".join(f'<a href="/p/{p}">{p}</a>' for p in pages))

    # JSON-LD only: the page shows a thumbnail under another path; the 1920 px version is in JSON-LD
    big, thumb = _versions(1)
    want["jsonld"] = big
    ld = {"@context": "https://schema.org", "@type": "Product", "name": "Dress",
          "image": [{"@type": "ImageObject", "contentUrl": "/img/zr/full/a1.jpg", "width": "1920"}]}
    r["/p/jsonld"] = page('<main><img src="/img/zr/t/a1-thumb.jpg" alt="dress"></main>',
                          head=f'<script type="application/ld+json">{json.dumps(ld)}</script>')
    r["/img/zr/full/a1.jpg"], r["/img/zr/t/a1-thumb.jpg"] = _img(big), _img(thumb)

    # embedded state only: the large versions are strings in a script (escaped slashes, too)
    big, thumb = _versions(2)
    big3, _ = _versions(3)
    want["state"], want["state-escaped"] = big, big3
    state = ('{"product":{"media":[{"uri":"/img/zl/a2.jpg?imwidth=1800"},'
             '{"uri":"http:\\/\\/' + f"{server.host}:{server.port}" + '\\/img\\/zl\\/a3.jpg"}]}}')
    r["/p/state"] = page('<img src="/img/zl/a2.jpg?imwidth=156">',
                         head=f"<script>window.__STATE__ = {state};</script>")
    r["/img/zl/a2.jpg?imwidth=1800"], r["/img/zl/a2.jpg?imwidth=156"] = _img(big), _img(thumb)
    r["/img/zl/a3.jpg"] = _img(big3)

    # <link rel=image_src>: the 1200 px version; the page's <img> is a 300 px one (a bare number:
    # not grouped by URL, so both are fetched and the larger replaces the smaller by difference hash)
    big, thumb = _versions(4)
    want["imagesrc"] = big
    r["/p/imagesrc"] = page('<img src="/img/sp/a4_300_1.jpg">', head='<link rel="image_src" href="/img/sp/a4_1200_1.jpg">')
    r["/img/sp/a4_1200_1.jpg"], r["/img/sp/a4_300_1.jpg"] = _img(big), _img(thumb)

    # zoom anchor around the thumbnail: no widths anywhere, so HEAD's Content-Length decides
    big, thumb = _versions(5)
    want["zoom"] = big
    r["/p/zoom"] = page('<a href="/img/kb/zoom/a5.jpg"><img src="/img/kb/a5.jpg"></a>')
    r["/img/kb/zoom/a5.jpg"], r["/img/kb/a5.jpg"] = _img(big), _img(thumb)

    # data-* srcsets and a data-* HD source on another element
    big, thumb = _versions(6)
    mid = jpeg(_photo(6).resize((600, 800)))
    big7, thumb7 = _versions(7)
    want["data"], want["data-hd"] = big, big7
    r["/p/data"] = page(
        '<img src="/img/sf/a6.jpg?sw=300" data-secondary-srcset="/img/sf/a6.jpg?sw=600 600w, /img/sf/a6.jpg?sw=900 900w">'
        '<div class="pdp" data-product-hdimage-source="/img/sf/a7-hd.jpg"><img src="/img/sf/a7.jpg"></div>')
    r["/img/sf/a6.jpg?sw=900"], r["/img/sf/a6.jpg?sw=600"], r["/img/sf/a6.jpg?sw=300"] = _img(big), _img(mid), _img(thumb)
    r["/img/sf/a7-hd.jpg"], r["/img/sf/a7.jpg"] = _img(big7), _img(thumb7)

    # <picture> whose <source> is a transparent placeholder with no descriptor
    big, _ = _versions(8)
    want["picture"] = big
    gif = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
    import io
    buf = io.BytesIO()
    gif.save(buf, format="GIF")
    r["/p/picture"] = page('<picture><source srcset="/img/tc/trans.gif"><img src="/img/tc/trans.gif" '
                           'data-original="/img/tc/a8.jpg"></picture>')
    r["/img/tc/a8.jpg"], r["/img/tc/trans.gif"] = _img(big), Response(200, buf.getvalue(), "image/gif")

    # a menu of teasers, a logo in the site header, a banner, and one real photo
    big, _ = _versions(9)
    want["menu-photo"] = big
    teasers = [jpeg(_photo(20 + i).resize((300, 400))) for i in range(4)]
    banner = jpeg(Image.new("RGB", (1600, 400), (200, 30, 30)))
    r["/p/menu"] = page(
        '<header><img src="/img/brand/shop.png" alt="Shop"></header>'
        '<nav><ul>' + "".join(f'<li><img src="/img/menu/t{i}.jpg"></li>' for i in range(2)) + '</ul></nav>'
        '<div class="mega-menu">' + "".join(f'<img src="/img/menu/t{i}.jpg">' for i in range(2, 4)) + '</div>'
        '<main><img src="/img/promo/sale.jpg"><img src="/img/icons/cart-icon.png">'
        '<img src="/img/pdp/a9.jpg"></main>')
    for i, data in enumerate(teasers):
        r[f"/img/menu/t{i}.jpg"] = _img(data)
    r["/img/brand/shop.png"] = _img(jpeg(Image.new("RGB", (400, 400), (0, 0, 0))))
    r["/img/icons/cart-icon.png"] = _img(jpeg(Image.new("RGB", (200, 200), (0, 0, 255))))
    r["/img/promo/sale.jpg"], r["/img/pdp/a9.jpg"] = _img(banner), _img(big)

    # the thumbnail on one page, its 1800 px version on the next
    big, thumb = _versions(10)
    want["thumb-first"] = big
    r["/p/thumb-first"] = page('<img src="/img/zl/b1.jpg?imwidth=156"><a href="/p/thumb-later">more</a>')
    r["/p/thumb-later"] = page('<img src="/img/zl/b1.jpg?imwidth=1800">')
    r["/img/zl/b1.jpg?imwidth=156"], r["/img/zl/b1.jpg?imwidth=1800"] = _img(thumb), _img(big)

    # a zoom viewer that builds its large image only on hover (the URL is made in script)
    big, thumb = _versions(11)
    want["hover"] = big
    r["/p/hover"] = page('<img class="thumb" id="c1" src="/img/hv/c1-small.jpg"><div id="zoom"></div>' + HOVER_SCRIPT)
    r["/img/hv/c1-small.jpg"], r["/img/hv/c1-large.jpg"] = _img(thumb), _img(big)

    # a model photo (a real face) and a product shot, no role rule for either
    pics = photos()
    model, flat = jpeg(pics["input"]), jpeg(_photo(12))
    want["model"], want["flat"] = model, flat
    r["/p/model"] = page('<img src="/img/photo/look.jpg"><img src="/img/photo/item.jpg">')
    r["/img/photo/look.jpg"], r["/img/photo/item.jpg"] = _img(model), _img(flat)
    return want


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SE_OFFLINE": "true", "SYNTHPIPE_SCRAPE__PAGE_TIMEOUT_S": "20",
           "SYNTHPIPE_SCRAPE__SETTLE_S": "0.1", "SYNTHPIPE_SCRAPE__SITEMAPS": "false"}
    return subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_shop_crawl_keeps_the_largest_version_of_each_photo_and_leaves_furniture_behind(tmp_path: Path) -> None:
    from common.store.db import get_database

    server = SiteServer()
    want = _shop(server)
    sites = tmp_path / "sites.yaml"
    with server:
        sites.write_text(f"""
categories:
  - name: retailer
    sites:
      - name: shop
        start_urls: ["{server.url('/')}"]
        max_depth: 2
        max_pages: 20
        delay_s: 0
        interact: {{selector: ".thumb", action: hover, max_elements: 5, max_seconds: 3}}
""")
        assert _cli("crawl", "--sites", str(sites), "--batches", "1", "--seed", "1").returncode == 0
        run = _cli("run", "--stage", "scrape", "--json")
        assert run.returncode == 0, run.stderr
        requests = [(r.method, r.path) for r in server.log]

    with get_database().session() as s:
        assets = s.scalars(select(Asset)).all()
        stored = {a.sha256: a for a in assets}
        report = s.scalars(select(Job).where(Job.stage == "scrape")).one().result["report"]
    # every photo is stored at its largest version, and nothing else is
    missing = {name for name, data in want.items() if _sha(data) not in stored}
    assert not missing, f"not stored at full size: {missing}: {[(i['url'], i['status'], i['code']) for i in report['images']]} {report['images_skipped']} {report['images_failed']}"
    assert len(assets) == len(want), sorted((a.source_url, a.sha256 in {_sha(d) for d in want.values()}) for a in assets)

    gets = {p for m, p in requests if m == "GET"}
    # grouped by URL: the smaller versions were never downloaded
    for never in ("/img/zl/a2.jpg?imwidth=156", "/img/sf/a6.jpg?sw=300", "/img/sf/a6.jpg?sw=600",
                  "/img/kb/a5.jpg", "/img/sf/a7.jpg", "/img/tc/trans.gif", "/img/hv/c1-small.jpg"):
        assert never not in gets, never
    # the zoom anchor's versions were ordered by HEAD
    assert ("HEAD", "/img/kb/zoom/a5.jpg") in requests and ("HEAD", "/img/kb/a5.jpg") in requests
    # furniture: never requested, counted by reason code
    for never in ("/img/menu/t0.jpg", "/img/menu/t2.jpg", "/img/brand/shop.png", "/img/icons/cart-icon.png"):
        assert never not in gets, never
    assert report["images_skipped"]["image.in_navigation"] == 5  # four teasers and the header's logo
    assert report["images_skipped"]["image.logo_or_icon"] == 1
    assert report["rejections"]["image.banner_shape"] == 1  # 1600x400, known only once downloaded
    assert report["images_skipped"]["image.smaller_version"] >= 5

    # a thumbnail stored first was replaced by its larger version, both URLs in provenance
    for name, url in (("thumb-first", "/img/zl/b1.jpg?imwidth=156"), ("imagesrc", "/img/sp/a4_300_1.jpg")):
        asset = stored[_sha(want[name])]
        assert (asset.width, asset.height) == BIG
        urls = {v["url"]: v for v in asset.versions}
        assert urls[server.url(url)]["kept"] is False and urls[asset.source_url]["kept"] is True, asset.versions
    statuses = {i["url"]: i["status"] for i in report["images"]}
    assert statuses[server.url("/img/zl/b1.jpg?imwidth=1800")] == "replaced"

    # roles from the image: the face makes a person photo, the product shot is a garment
    model, flat = stored[_sha(want["model"])], stored[_sha(want["flat"])]
    assert model.role == "person" and model.role_evidence["by"] == "detector" and model.role_evidence["faces"] >= 1
    assert flat.role == "garment" and flat.role_evidence == {**flat.role_evidence, "by": "detector", "faces": 0}
    assert report["roles_by"]["detector"] == len(want)

    # the export's summary.json carries the same codes, summed over the store's crawls
    from common.dataset.summary import summarise

    crawl = summarise(get_database())["crawl"]
    assert crawl["crawls"] == 1 and crawl["images_skipped"] == report["images_skipped"]
    assert crawl["rejections"] == report["rejections"] == {"image.banner_shape": 1}
    assert crawl["images_by_status"]["replaced"] == 3 and crawl["roles_by"] == {"detector": len(want)}
