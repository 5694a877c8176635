"""Review API latency on a large queue: SQLite and PostgreSQL.

    python benchmarks/bench_review.py                  # 5000 edits, SQLite and the local PostgreSQL
    python benchmarks/bench_review.py --edits 20000 --pg-url postgresql+psycopg://postgres@127.0.0.1/postgres

Rows are written straight into the store (no images: the API lists rows, it does not read
pixels); a third of the edits already carry two reviewers' decisions. Each figure is the median
of --repeat requests through the real app (FastAPI TestClient, in-process), in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def seed(db, n: int) -> str:  # type: ignore[no-untyped-def]
    from common.review import auth
    from common.store.rows import Asset, Decision, Edit, ItemSet, ItemSetAsset, Review, Score

    rng = random.Random(0)
    with db.session() as s:
        ann = auth.add_reviewer(s, "ann", "bench-password")
        ben = auth.add_reviewer(s, "ben", "bench-password")
        token = auth.new_token(s, "ann")
        s.flush()
        for start in range(0, n, 1000):
            chunk = range(start, min(n, start + 1000))
            assets = [Asset(sha256=f"{i:064x}", phash="0" * 16, colour=None, size_bytes=1, format="PNG", width=64,
                            height=64, role="person", uri=f"file:///nowhere/{i}.png", site=f"shop-{i % 5}",
                            category=f"cat-{i % 3}") for i in chunk]
            s.add_all(assets)
            s.flush()
            sets = [ItemSet(key=f"bench-{i}", recipe="tryon" if i % 2 else "enrich") for i in chunk]
            for item, asset in zip(sets, assets, strict=True):
                item.members = [ItemSetAsset(position=0, asset_id=asset.id, role="person")]
            s.add_all(sets)
            s.flush()
            edits = [Edit(item_set_id=item.id, origin="imported", edit_prompt="bench", import_key=f"bench-{item.id}",
                          backend="b", model_id="m", params={}, seed=0, output_uri="file:///nowhere/out.png",
                          output_sha256="0" * 64, width=64, height=64, timings={}) for item in sets]
            s.add_all(edits)
            s.flush()
            for e in edits:
                clip = rng.random()
                rejected = clip < 0.3
                s.add(Score(edit_id=e.id, scorer="clip", metrics={"clip_score": clip}, params={}))
                s.add(Decision(edit_id=e.id, decision="rejected" if rejected else "accepted",
                               reasons=["instruction_not_followed"] if rejected else [], margin=abs(clip - 0.3),
                               failed={}, thresholds={}))
                if e.id % 3 == 0:
                    for who in (ann, ben):
                        s.add(Review(reviewer_id=who.id, edit_id=e.id,
                                     decision="rejected" if rng.random() < 0.4 else "accepted", tags=[]))
    return token


def measure(url: str, n: int, repeat: int) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from common.core.settings import ReviewSettings
    from common.review.app import create_app
    from common.store.db import get_database
    from common.store.storage import Storage

    db = get_database(url, ensure=False)
    db.upgrade()
    t0 = time.perf_counter()
    token = seed(db, n)
    seeded = time.perf_counter() - t0
    if db.dialect == "postgresql":  # table statistics, as autovacuum keeps them on a live database
        from sqlalchemy import text

        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    app = create_app(db, Storage(Path(tempfile.mkdtemp()).as_uri()), ReviewSettings())
    c = TestClient(app, base_url="http://127.0.0.1")
    h = {"Authorization": f"Bearer {token}"}

    def median_ms(method: str, path: str, **kw) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            r = c.request(method, path, headers=h, **kw)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        return round(1000 * statistics.median(times), 1)

    first = c.get("/api/items", headers=h).json()["items"][0]["edit_id"]
    return {
        "seed_s": round(seeded, 1),
        "queue page (20, least certain)": median_ms("GET", "/api/items"),
        "filtered (site, ai, score range)": median_ms("GET", "/api/items?site=shop-1&ai=rejected&score=clip.clip_score&score_min=0.1&score_max=0.2"),
        "my decisions (mine=done)": median_ms("GET", "/api/items?mine=done"),
        "decision POST": median_ms("POST", f"/api/items/{first}/decision", json={"decision": "accept"}),
        "agreement stats": median_ms("GET", "/api/stats"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   help="admin URL: a scratch database is made next to it ('' skips PostgreSQL)")
    args = p.parse_args()
    from isolation import isolate

    isolate("bench-review-")  # own data dir, database and storage; none of the caller's settings
    from common.devkit.scratch import scratch_database

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(f"sqlite:///{tmp}/bench.db", args.edits, args.repeat)
    if args.pg_url:
        with scratch_database(args.pg_url, "synthpipe_bench") as url:
            results["postgresql"] = measure(url, args.edits, args.repeat)
            from common.store.db import reset_databases

            reset_databases()
    keys = list(next(iter(results.values())))
    print(f"| {args.edits} edits, median ms | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r[k]) for r in results.values()) + " |")
    print(json.dumps({"benchmark": "review", "edits": args.edits, "repeat": args.repeat, "results": results}))


if __name__ == "__main__":
    main()
