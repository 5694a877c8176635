"""Crawl throughput with 1, 2 and 4 local hosts crawled at once, per-host politeness checked from
each server's own request log; and the cost of pairing one stored image as the store grows.

    python benchmarks/bench_crawl.py [--pages 12] [--images 3] [--delay 0.1] [--sizes 1000,10000,100000]

Each host is a generated shop on its own loopback address (127.0.0.1, 127.0.0.2, ...); the crawler
runs ``scrape.concurrency`` = hosts sites at once, one browser each. The politeness check reads
the gaps between consecutive requests in each server's log: none may be shorter than the delay.

Pairing: a SQLite store is filled with N assets (30 % person photos), then each of 100 new
assets is paired as the crawler pairs it (``pair_new_assets``: ids drawn through the index), and
the same number the way pairing worked before (every person and garment id loaded per image).
Needs /usr/bin/chromium and /usr/bin/chromedriver for the crawl part (``--no-crawl`` skips it).
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (64, 64), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def build_site(pages: int, images: int, salt: int) -> dict[str, tuple[str, bytes]]:
    routes: dict[str, tuple[str, bytes]] = {"/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n")}
    for p in range(pages):
        links = "".join(f'<a href="/p/{q}">{q}</a> ' for q in (p + 1, p + 2) if q < pages)
        imgs = ""
        for i in range(images):
            name = f"/img/{p}-{i}.png"
            routes[name] = ("image/png", _png(salt * 1_000_000 + p * 1000 + i))
            imgs += f'<img src="{name}">' if i % 2 == 0 else f'<img src="data:," data-src="{name}">'
        routes[f"/p/{p}"] = ("text/html", f"<!doctype html><html><body>{links}{imgs}</body></html>".encode())
    routes["/"] = routes["/p/0"]
    return routes


class LoggedServer:
    """A site on one loopback address that logs when each request arrived."""

    def __init__(self, host: str, routes: dict[str, tuple[str, bytes]]) -> None:
        self.times: list[float] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                with lock:
                    outer.times.append(time.monotonic())
                ctype, body = routes.get(self.path, ("text/html", b"not found"))
                self.send_response(200 if self.path in routes else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def min_gap(self) -> float:
        t = sorted(self.times)
        return min((b - a for a, b in zip(t, t[1:], strict=False)), default=float("inf"))


def crawl_hosts(n_hosts: int, pages: int, images: int, delay: float, settle: float) -> dict[str, Any]:
    from common.core.settings import ScrapeSettings
    from worker_scrape.crawler import Crawler, ImageCandidate, ImageOutcome
    from worker_scrape.sites import parse_sites

    servers = [LoggedServer(f"127.0.0.{i + 1}", build_site(pages, images, i)) for i in range(n_hosts)]
    sites = "".join(f"""
      - name: shop-{i}
        start_urls: ["{s.url}"]
        max_depth: {pages}
        max_pages: {pages}
        delay_s: {delay}
        default_role: garment""" for i, s in enumerate(servers))
    site_file = parse_sites("categories:\n  - name: bench\n    sites:" + sites)

    def on_image(_cand: ImageCandidate) -> ImageOutcome:
        return ImageOutcome("registered")

    config = ScrapeSettings(concurrency=n_hosts, download_workers=4, settle_s=settle, scroll_steps=2, sitemaps=False)
    with Crawler(config) as crawler:
        browsers = [crawler._take_browser() for _ in range(n_hosts)]
        for b in browsers:  # started before the clock: the figure is crawling, not browser start-up
            b.start()
            crawler._give_browser(b)
        t0 = time.perf_counter()
        reports = crawler.crawl_batch(list(site_file.iter_sites()), on_image=on_image)
        seconds = time.perf_counter() - t0
    for r in reports:
        assert not isinstance(r, BaseException), r
    page_count = sum(len(r.pages_visited) for r in reports)  # type: ignore[union-attr]
    image_count = sum(r.images_downloaded for r in reports)  # type: ignore[union-attr]
    gaps = [s.min_gap() for s in servers]
    for s in servers:
        s.httpd.shutdown()
    return {"hosts": n_hosts, "pages": page_count, "images": image_count, "seconds": seconds,
            "pages_s": page_count / seconds, "images_s": image_count / seconds, "min_gap": min(gaps),
            "polite": min(gaps) >= delay - 0.005}


# --- pairing ----------------------------------------------------------------------------------


def _asset_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    from common.store.rows import phash_bands

    rows = []
    for _ in range(n):
        h = f"{rng.getrandbits(64):016x}"
        rows.append({"sha256": uuid.uuid4().hex * 2, "phash": h, "colour": "80" * 27, "size_bytes": 1,
                     "format": "JPEG", "width": 64, "height": 64,
                     "role": "person" if rng.random() < 0.3 else "garment", "uri": "memory://x",
                     **{f"phash_b{j}": b for j, b in enumerate(phash_bands(h))}})
    return rows


def pairing_costs(sizes: list[int], trials: int) -> list[dict[str, Any]]:
    from sqlalchemy import insert

    from common.core.settings import get_settings
    from common.domain.pairing import pair_new_assets, pair_tryon
    from common.store.db import Database
    from common.store.rows import Asset

    tmp = tempfile.mkdtemp(prefix="bench-pairing-")
    os.environ["SYNTHPIPE_DATA_DIR"] = tmp
    settings = get_settings()
    db = Database(f"sqlite:///{tmp}/pairing.db")
    db.upgrade()
    rng = random.Random(2026)
    have, out = 0, []
    for n in sizes:
        with db.session() as s:
            for start in range(have, n, 5000):
                s.execute(insert(Asset), _asset_rows(min(5000, n - start), rng))
            s.commit()
        have = n
        timings: dict[str, float] = {"indexed": 0.0, "load_all": 0.0}
        for i in range(trials):
            for way in ("indexed", "load_all"):
                with db.session() as s:
                    row = _asset_rows(1, rng)[0]
                    asset_id = s.scalar(insert(Asset).returning(Asset.id), row)
                    t0 = time.perf_counter()
                    if way == "indexed":
                        pair_new_assets(s, settings, [asset_id], seed=i)
                    elif row["role"] == "person":  # before: every garment id loaded for one person
                        pair_tryon(s, settings, limit=1, seed=i, persons=[asset_id])
                    else:  # before: every person and garment id loaded for one garment
                        pair_tryon(s, settings, limit=1, seed=i)
                    timings[way] += time.perf_counter() - t0
                    s.commit()
        have += 2 * trials
        out.append({"assets": n, "indexed_ms": timings["indexed"] / trials * 1e3,
                    "load_all_ms": timings["load_all"] / trials * 1e3})
    db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pages", type=int, default=12, help="pages per host")
    parser.add_argument("--images", type=int, default=3, help="images per page")
    parser.add_argument("--delay", type=float, default=0.1, help="per-host delay_s")
    parser.add_argument("--settle", type=float, default=0.1, help="scrape.settle_s")
    parser.add_argument("--hosts", default="1,2,4")
    parser.add_argument("--sizes", default="1000,10000,100000", help="store sizes for the pairing cost")
    parser.add_argument("--trials", type=int, default=100, help="new assets paired per size and way")
    parser.add_argument("--no-crawl", action="store_true")
    args = parser.parse_args()
    from isolation import isolate

    isolate("bench-crawl-")  # own data dir, database and storage; none of the caller's settings
    logging.basicConfig(level=logging.WARNING)
    rows: list[dict[str, Any]] = []
    if not args.no_crawl:
        rows = [crawl_hosts(int(h), args.pages, args.images, args.delay, args.settle) for h in args.hosts.split(",")]
        print(f"crawl: {args.pages} pages x {args.images} images per host, delay_s {args.delay}, "
              f"settle {args.settle}s, concurrency = hosts")
        print(f"{'hosts':>5}{'pages':>7}{'images':>8}{'seconds':>9}{'pages/s':>9}{'images/s':>10}"
              f"{'min gap s':>11}{'polite':>8}{'speed-up':>10}")
        for r in rows:
            print(f"{r['hosts']:>5}{r['pages']:>7}{r['images']:>8}{r['seconds']:>9.2f}{r['pages_s']:>9.2f}"
                  f"{r['images_s']:>10.2f}{r['min_gap']:>11.3f}{'yes' if r['polite'] else 'NO':>8}"
                  f"{r['pages_s'] / rows[0]['pages_s']:>9.2f}x")
        assert all(r["polite"] for r in rows), "a host saw two requests closer than its delay"
    costs = pairing_costs([int(x) for x in args.sizes.split(",")], args.trials)
    print(f"pairing one new asset ({args.trials} per size), SQLite")
    print(f"{'assets':>8}{'indexed ms':>12}{'load-all ms':>13}")
    for c in costs:
        print(f"{c['assets']:>8}{c['indexed_ms']:>12.2f}{c['load_all_ms']:>13.2f}")
    print(json.dumps({"benchmark": "crawl", "crawl": rows, "pairing": costs}))


if __name__ == "__main__":
    main()
