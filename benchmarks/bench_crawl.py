"""Crawl throughput against a generated local site: one browser reused across the batch
vs a new browser per page.

    python benchmarks/bench_crawl.py [--pages 20] [--images 3] [--settle 0.2]

Serves the site on 127.0.0.1 only; needs /usr/bin/chromium and /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import logging
import random
import sys
import threading
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from worker_scrape.config import CrawlConfig  # noqa: E402
from worker_scrape.crawler import Crawler, ImageCandidate  # noqa: E402
from worker_scrape.sites import parse_sites  # noqa: E402


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (64, 64), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def build_site(pages: int, images: int) -> dict[str, tuple[str, bytes]]:
    routes: dict[str, tuple[str, bytes]] = {
        "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n")
    }
    for p in range(pages):
        links = "".join(f'<a href="/p/{q}">{q}</a> ' for q in (p + 1, p + 2) if q < pages)
        imgs = ""
        for i in range(images):
            name = f"/img/{p}-{i}.png"
            routes[name] = ("image/png", _png(p * 1000 + i))
            kind = i % 3
            if kind == 0:
                imgs += f'<img src="{name}">'
            elif kind == 1:
                imgs += f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="{name}">'
            else:
                imgs += f'<img src="/img/none.png" srcset="/img/none.png 100w, {name} 800w">'
        html = f"<!doctype html><html><body><h1>page {p}</h1>{links}{imgs}</body></html>"
        routes[f"/p/{p}"] = ("text/html", html.encode())
    routes["/"] = routes["/p/0"]
    return routes


def serve(routes: dict[str, tuple[str, bytes]]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            ctype, body = routes.get(self.path, ("text/html", b"not found"))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return httpd


def run(reuse: bool, start_url: str, pages: int, settle: float) -> dict[str, float]:
    site_file = parse_sites(f"""
categories:
  - name: bench
    sites:
      - name: bench-site
        start_urls: ["{start_url}"]
        max_depth: {pages}
        max_pages: {pages}
        delay_s: 0
        default_role: garment
""")
    category, site = site_file.site("bench-site")
    seen: set[str] = set()

    def on_image(cand: ImageCandidate) -> str:
        digest = hashlib.sha256(cand.data).hexdigest()
        status = "duplicate" if digest in seen else "registered"
        seen.add(digest)
        return status

    config = CrawlConfig(reuse_browser=reuse, settle_s=settle)
    t0 = time.perf_counter()
    with Crawler(config) as crawler:
        report = crawler.crawl_site(site, category, on_image=on_image)
        starts = crawler.browser.starts
    seconds = time.perf_counter() - t0
    return {
        "pages": len(report.pages_visited),
        "images": report.images_downloaded,
        "seconds": seconds,
        "starts": starts,
        "pages_s": len(report.pages_visited) / seconds,
        "images_s": report.images_downloaded / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--images", type=int, default=3, help="images per page")
    parser.add_argument("--settle", type=float, default=0.2, help="CrawlConfig.settle_s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    httpd = serve(build_site(args.pages, args.images))
    start = f"http://127.0.0.1:{httpd.server_address[1]}/"
    rows = [
        ("one browser per batch", run(True, start, args.pages, args.settle)),
        ("new browser per page", run(False, start, args.pages, args.settle)),
    ]
    httpd.shutdown()
    print(f"site: {args.pages} pages x {args.images} images, settle {args.settle}s, delay 0")
    print(
        f"{'mode':<24}{'pages':>6}{'images':>8}{'starts':>8}{'seconds':>9}{'pages/s':>9}{'images/s':>10}"
    )
    for name, r in rows:
        print(
            f"{name:<24}{r['pages']:>6}{r['images']:>8}{r['starts']:>8}{r['seconds']:>9.2f}"
            f"{r['pages_s']:>9.2f}{r['images_s']:>10.2f}"
        )
    print(
        f"speed-up from reusing the browser: {rows[1][1]['seconds'] / rows[0][1]['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
