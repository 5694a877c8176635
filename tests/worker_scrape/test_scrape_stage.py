"""The scrape stage end to end: `synthpipe crawl` queues batches, `synthpipe run --stage scrape`
crawls a site served on 127.0.0.1 in headless Chromium, stores images with provenance, and
pairs them into queued vl jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.shops import jpeg, make_shop, sites_file
from fixtures.testsite import Response, SiteServer, page
from sqlalchemy import select

from common.devkit import samples
from common.store.rows import Asset, ItemSet, Job

pytestmark = pytest.mark.browser


@pytest.fixture
def shop() -> SiteServer:
    return make_shop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SE_OFFLINE": "true", "SYNTHPIPE_SCRAPE__PAGE_TIMEOUT_S": "20"}
    return subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_crawl_then_run_stores_images_with_provenance_and_fills_the_vl_queue(shop: SiteServer,
                                                                              tmp_path: Path) -> None:
    from common.store.db import get_database

    with shop:
        sites = sites_file(tmp_path, shop.url("/"))
        queued = _cli("crawl", "--sites", str(sites), "--batches", "1", "--seed", "3", "--json")
        assert queued.returncode == 0, queued.stderr
        assert json.loads(queued.stdout)["queued"] == 1
        again = json.loads(_cli("crawl", "--sites", str(sites), "--batches", "1", "--seed", "3", "--json").stdout)
        assert again["queued"] == 0 and again["existing"] == 1
        run = _cli("run", "--stage", "scrape", "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["scrape"]["succeeded"] == 1
        requested = shop.paths()
    assert not any(p.startswith("/account") for p in requested), "robots.txt/deny ignored"
    assert not any(p.startswith("/img/small/") for p in requested), "a smaller srcset candidate was fetched"

    db = get_database()
    with db.session() as s:
        assets = s.scalars(select(Asset)).all()
        by_role = {r: sorted(a.source_url.rsplit("/", 2)[-2] + "/" + a.source_url.rsplit("/", 1)[-1]
                             for a in assets if a.role == r) for r in ("person", "garment")}
        assert by_role["person"] == ["model/0.jpg", "model/1.jpg", "model/2.jpg"]
        assert by_role["garment"] == ["product/0.jpg", "product/1.jpg", "product/2.jpg", "product/3.jpg"]
        for a in assets:  # provenance on every asset
            assert a.site == "test-shop" and a.category == "retailer" and a.licence == "test licence"
            assert a.page_url and a.page_url.startswith(shop.url("/")) and a.fetched_at is not None
        job = s.scalars(select(Job).where(Job.stage == "scrape")).one()
        result = job.result or {}
        statuses = {i["url"].rsplit("/", 1)[-1]: i["status"] for i in result["report"]["images"]}
        via = {i["url"]: i["found_via"] for i in result["report"]["images"]}  # how each page was found ...
        assert {a.found_via for a in assets} == {"link"}  # this shop has no sitemap; its photos are a link away
        assert all(a.found_via == via[a.source_url] for a in assets)  # ... is in each asset's provenance
        assert statuses["0-copy.jpg"] == "duplicate"
        assert statuses["near.jpg"] == "near_duplicate"
        # crawling alone filled the vl queue: every person photo is in a try-on set
        sets = s.scalars(select(ItemSet)).all()
        paired_people = {m.asset_id for item in sets for m in item.members if m.role == "person"}
        assert paired_people == {a.id for a in assets if a.role == "person"}
        vl_jobs = s.scalars(select(Job).where(Job.stage == "vl")).all()
        assert len(vl_jobs) == len(sets) > 0

    rerun = json.loads(_cli("run", "--stage", "scrape", "--json").stdout)  # nothing queued: nothing done
    assert rerun["scrape"]["claimed"] == 0


def test_run_crawls_several_sites_at_once_with_concurrency(tmp_path: Path) -> None:
    """`run --concurrency 2` claims two crawl jobs and crawls their sites at the same time."""
    from common.store.db import get_database

    servers = [SiteServer(f"127.0.0.{11 + i}") for i in range(2)]
    for n, srv in enumerate(servers):
        srv.routes["/"] = page("".join(f'<a href="/p{i}">p</a>' for i in range(4)))
        for i in range(4):
            srv.routes[f"/p{i}"] = page(f'<img src="/img/{i}.jpg">')
            srv.routes[f"/img/{i}.jpg"] = Response(200, jpeg(samples.garment(10 * n + i, (96, 96))), "image/jpeg")
    sites = tmp_path / "two.yaml"
    sites.write_text("categories:\n  - name: shops\n    sites:\n" + "".join(f"""
      - name: shop-{i}
        start_urls: ["{srv.url('/')}"]
        delay_s: 0.3
        default_role: garment
""" for i, srv in enumerate(servers)))
    with servers[0], servers[1]:
        assert _cli("crawl", "--sites", str(sites), "--batches", "6", "--seed", "1").returncode == 0
        with get_database().session() as s:  # keep one job of each site: two jobs, two hosts
            jobs = s.scalars(select(Job).where(Job.stage == "scrape").order_by(Job.id)).all()
            keep = {j.payload["site"]["name"]: j.id for j in reversed(jobs)}
            assert len(keep) == 2
            for j in jobs:
                if j.id not in keep.values():
                    s.delete(j)
            s.commit()
        run = _cli("run", "--stage", "scrape", "--concurrency", "2", "--json")
        assert run.returncode == 0, run.stderr
        times = [srv.times() for srv in servers]
    assert json.loads(run.stdout)["scrape"] == {"claimed": 2, "succeeded": 2}
    assert times[0][0] < times[1][-1] and times[1][0] < times[0][-1], "the two sites were crawled one after the other"
    for t in times:
        assert len(t) >= 10 and min(b - a for a, b in zip(t, t[1:], strict=False)) >= 0.3 - 0.005
