"""What reading a heavy product page costs: the extraction script in headless Chromium, grouping
versions in Python, and the role detector per downloaded photo.

    python benchmarks/bench_shop_page.py [--elements 500,2000,8000] [--state-kb 1000] [--photos 8]

A generated page has ``--elements`` elements: a gallery of images with srcsets and zoom anchors,
a menu of teasers, and filler blocks with ``data-*`` attributes, plus JSON-LD and an inline state
script of ``--state-kb`` KB naming image URLs. For each size: the time of the extraction script
alone (median of 3 reads of the loaded page), of ``page_candidates`` + ``group_versions`` on its
output, and the number of URLs, photo groups, and groups kept (not furniture, within
``scrape.max_state_photos``). Then the face detector on ``--photos``
800x1200 photos (the crawler's ``RoleDetector``): milliseconds per photo. The last line is JSON.
Needs /usr/bin/chromium and /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build_page(elements: int, state_kb: int) -> str:
    gallery = max(4, elements // 20)
    menu = max(2, elements // 50)
    filler = max(0, elements - 3 * gallery - 2 * menu)
    parts = ["<header><nav>"]
    parts += [f'<a href="/c/{i}"><img src="/img/menu/t{i}.jpg" width="120" height="80"></a>' for i in range(menu)]
    parts.append("</nav></header><main>")
    for i in range(gallery):
        parts.append(f'<a href="/img/zoom/p{i}.jpg"><img src="/img/p{i}.jpg?sw=300" '
                     f'srcset="/img/p{i}.jpg?sw=600 600w, /img/p{i}.jpg?sw=1200 1200w" '
                     f'data-zoom-image="/img/p{i}_xl.jpg"></a>')
    parts += [f'<div class="tile" data-track="{i}" data-hd="/img/f{i % 97}_hd.jpg"><span>item {i}</span></div>'
              for i in range(filler)]
    parts.append("</main>")
    ld = {"@type": "Product", "image": [f"/img/full/p{i}.jpg" for i in range(gallery)]}
    entries, size, n = [], 0, 0
    while size < state_kb * 1024:
        entry = f'{{"id":{n},"uri":"\\/img\\/st\\/s{n}.jpg","title":"{"x" * 40}"}}'
        entries.append(entry)
        size += len(entry)
        n += 1
    head = (f'<script type="application/ld+json">{json.dumps(ld)}</script>'
            f'<script>window.__STATE__={{"media":[{",".join(entries)}]}};</script>')
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--elements", default="500,2000,8000")
    ap.add_argument("--state-kb", type=int, default=1000)
    ap.add_argument("--photos", type=int, default=8)
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-shop-page-")
    from fixtures.testsite import Response, SiteServer

    from common.core.settings import ImageSettings, ScrapeSettings
    from common.devkit import samples
    from worker_scrape.browser import _EXTRACT_JS, Browser
    from worker_scrape.extract import group_versions, page_candidates
    from worker_scrape.roles import RoleDetector
    from worker_scrape.sites import Site

    rows = []
    server = SiteServer()
    sizes = [int(x) for x in args.elements.split(",")]
    for n in sizes:
        server.routes[f"/p{n}"] = Response(200, build_page(n, args.state_kb).encode())
    with server, Browser(ScrapeSettings(settle_s=0, scroll_steps=0)) as browser:
        for n in sizes:
            page = browser.render(server.url(f"/p{n}"))
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                browser.driver.execute_script(_EXTRACT_JS, True)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cands = page_candidates(page.image_data(), page.base, keep_state_url=lambda u: "127.0.0.1" in u)
            groups = group_versions(cands, max_state_photos=ScrapeSettings().max_state_photos)
            py_s = time.perf_counter() - t0
            rows.append({"elements": n, "state_kb": args.state_kb, "extract_ms": round(1000 * statistics.median(times), 1),
                         "group_ms": round(1000 * py_s, 1), "urls": len(cands), "photos": len(groups),
                         "kept": sum(1 for g in groups if not g.junk)})
            print(f"{n:>6} elements: extraction script {rows[-1]['extract_ms']:>7} ms, grouping "
                  f"{rows[-1]['group_ms']:>6} ms, {len(cands)} URLs in {len(groups)} photos "
                  f"({rows[-1]['kept']} kept)")
    detector = RoleDetector(ImageSettings())
    site = Site(name="bench", start_urls=["http://127.0.0.1/"])
    photos = []
    for i in range(args.photos):
        buf = io.BytesIO()
        (samples.person if i % 2 else samples.garment)(i, (800, 1200)).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    detector.by_image(site, photos[0])  # load once
    t0 = time.perf_counter()
    for data in photos:
        detector.by_image(site, data)
    per_photo_ms = 1000 * (time.perf_counter() - t0) / len(photos)
    print(f"role detector: {per_photo_ms:.1f} ms per 800x1200 photo ({len(photos)} photos)")
    print(json.dumps({"pages": rows, "detector_ms_per_photo": round(per_photo_ms, 1)}))


if __name__ == "__main__":
    main()
