"""Near-duplicate lookup: indexed hash bands against a full scan, as the store grows.

    python benchmarks/bench_dedup.py                       # SQLite and PostgreSQL, 1k/10k/100k assets
    python benchmarks/bench_dedup.py --sizes 1000,200000 --lookups 300 --no-pg

Every downloaded or ingested image asks "is a stored asset within 4 bits of this hash (and of
the same colours)?" before it is stored. Stored hashes are random 64-bit values; a fifth of the
probes are near copies of stored hashes (so they hit), the rest are new (they miss, the common
case while crawling). Both ways must return the same asset for every probe: checked.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GREY = "80" * 27
THRESHOLD, TOLERANCE = 4, 24


def _fill(db, n: int, rng: random.Random) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from common.store.rows import Asset, phash_bands

    hashes = [f"{rng.getrandbits(64):016x}" for _ in range(n)]
    with db.session() as s:
        for start in range(0, n, 5000):
            s.execute(insert(Asset), [
                {"sha256": uuid.uuid4().hex * 2, "phash": h, "colour": GREY, "size_bytes": 1, "format": "JPEG",
                 "width": 64, "height": 64, "role": "garment", "uri": "memory://x",
                 **{f"phash_b{j}": b for j, b in enumerate(phash_bands(h))}}
                for h in hashes[start:start + 5000]])
    return hashes


def _probes(hashes: list[str], k: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(k):
        if i % 5 == 0:  # a near copy: flip up to THRESHOLD bits of a stored hash
            value = int(rng.choice(hashes), 16)
            for b in rng.sample(range(64), rng.randint(0, THRESHOLD)):
                value ^= 1 << b
            out.append(f"{value:016x}")
        else:
            out.append(f"{rng.getrandbits(64):016x}")
    return out


def _time(db, probes: list[str], use_bands: bool) -> tuple[float, list[int | None]]:  # type: ignore[no-untyped-def]
    from common.media.assets import find_near_duplicate

    found = []
    with db.session() as s:
        started = time.perf_counter()
        for p in probes:
            found.append(find_near_duplicate(s, p, GREY, THRESHOLD, TOLERANCE, use_bands=use_bands))
        return time.perf_counter() - started, found


def run(url: str, sizes: list[int], lookups: int, scan_lookups: int) -> list[dict[str, object]]:
    from common.store.db import Database

    db = Database(url)
    db.upgrade()
    rng = random.Random(2026)
    hashes: list[str] = []
    rows = []
    for n in sizes:
        hashes += _fill(db, n - len(hashes), rng)
        probes = _probes(hashes, lookups, rng)
        banded_s, banded = _time(db, probes, True)
        few = probes[:scan_lookups]  # the scan is slow: time fewer probes, compare per lookup
        scan_s, scanned = _time(db, few, False)
        assert banded[:scan_lookups] == scanned, "banded search and full scan disagree"
        per_banded, per_scan = banded_s / len(probes), scan_s / len(few)
        rows.append({"assets": n, "banded_ms": round(per_banded * 1e3, 3), "scan_ms": round(per_scan * 1e3, 2),
                     "speedup": round(per_scan / per_banded, 1), "hits": sum(x is not None for x in banded)})
    db.dispose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma list of store sizes (ascending)")
    ap.add_argument("--lookups", type=int, default=500, help="probes timed with the bands")
    ap.add_argument("--scan-lookups", type=int, default=30, help="probes timed with the full scan")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-dedup-")  # own data dir, database and storage; none of the caller's settings
    sizes = sorted(int(x) for x in args.sizes.split(","))
    from common.devkit.scratch import scratch_database

    results = {"sqlite": run(f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-dedup-')) / 'd.db'}", sizes,
                             args.lookups, args.scan_lookups)}
    if not args.no_pg:
        with scratch_database(args.pg_url, "synthpipe_bench") as url:
            results["postgresql"] = run(url, sizes, args.lookups, args.scan_lookups)
    print(f"near-duplicate lookup, threshold {THRESHOLD} bits, ms per lookup (same answers checked)")
    print(f"{'db':<11} {'assets':>8} {'banded ms':>10} {'scan ms':>9} {'speedup':>8} {'hits':>5}")
    for db_name, rows in results.items():
        for r in rows:
            print(f"{db_name:<11} {r['assets']:>8} {r['banded_ms']:>10} {r['scan_ms']:>9} {r['speedup']:>8} {r['hits']:>5}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
