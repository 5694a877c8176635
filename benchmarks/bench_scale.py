"""The store's everyday operations at 10k, 100k and (``--full``) 1M edits, on PostgreSQL.

    python benchmarks/bench_scale.py                 # 10k and 100k edits
    python benchmarks/bench_scale.py --full          # and 1M (about 9 GB of database)
    python benchmarks/bench_scale.py --smoke --json  # 500 edits, every operation once (CI)

Each size gets a scratch database next to ``--pg-url`` (dropped afterwards; ``--keep`` keeps it)
and its own data dir and object store; none of the caller's ``SYNTHPIPE_*`` settings are read.
A handful of sample photos go in through the normal ingest path, so every stored object the
rows name exists; then set-based SQL (``INSERT … SELECT generate_series``) writes, per edit, an
item set with its members, an analysis, the edit, 3 jobs (vl, edit, score: some score jobs
queued, some failed), 5 scores and a decision, and reviews by two reviewers on 2 % of edits.

Then, in one run per size, through the public entry points: ``jobs.claim`` of 8 (median of
``--repeat``), ``status``, the metrics scrape (``StoreCollector.collect``), the review queue page
(least certain, 20), a filtered queue (``ai=rejected``) and ``/api/stats`` through the real
review app with a token; ``synthpipe score --redecide`` and each export layout
(:data:`EXPORT_LAYOUTS`) as subprocesses under ``/usr/bin/time -v`` (wall time and peak RSS).
Prints a markdown table (operations × sizes, with the growth per 10× edits) or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: export layouts, by name: the ``synthpipe export`` arguments that write each one. Add one here
#: and it is timed and its peak memory measured at every size.
EXPORT_LAYOUTS: dict[str, list[str]] = {
    "imagefolder": ["--format", "imagefolder"],
    "parquet": ["--format", "parquet"],
}
#: the review API requests, by the row they are reported under
REVIEW_REQUESTS: dict[str, str] = {
    "review queue page (least certain, 20)": "/api/items?sort=uncertain&limit=20",
    "review queue filtered (ai=rejected, 20)": "/api/items?ai=rejected&limit=20",
    "/api/stats": "/api/stats",
}
SCORERS = ("change", "identity", "clip", "dino", "garment")
PASSWORD = "bench-scale-password"


def operations() -> list[tuple[str, str]]:
    """Every row of the table, with its unit, in order."""
    ops = [("build the store (SQL)", "s"), ("database size", "MiB"), ("claim 8 jobs", "ms"), ("status", "ms"),
           ("metrics scrape", "ms")]
    ops += [(name, "ms") for name in REVIEW_REQUESTS]
    ops += [("score --redecide", "s"), ("score --redecide peak RSS", "MiB")]
    for layout in EXPORT_LAYOUTS:
        ops += [(f"export {layout}", "s"), (f"export {layout} peak RSS", "MiB")]
    return ops


# --- building a store -------------------------------------------------------------------------


def ingest_photos(db: Any, storage: Any, settings: Any, folder: Path) -> dict[str, list[tuple[int, str, str, int, int]]]:
    """A few sample photos per role through the normal ingest path; (id, uri, sha256, w, h) by role."""
    from sqlalchemy import select

    from common.dataset.ingest import ingest
    from common.devkit.samples import write_samples
    from common.store.rows import Asset

    for role, sub in write_samples(folder, persons=4, garments=4, characters=3, seed=11).items():
        report = ingest(sub, role, db=db, storage=storage, settings=settings)
        if report.rejected:
            raise RuntimeError(f"sample photos refused by ingest: {report.rejected}")
    out: dict[str, list[tuple[int, str, str, int, int]]] = {}
    with db.session() as s:
        for a in s.execute(select(Asset).order_by(Asset.id)).scalars():
            out.setdefault(a.role, []).append((a.id, a.uri, a.sha256, a.width, a.height))
    return out


def _array(ids: list[int]) -> str:
    return "(ARRAY[" + ",".join(str(int(i)) for i in ids) + "])"


def build_sql(n: int, photos: dict[str, list[tuple[int, str, str, int, int]]], queued: int) -> list[str]:
    """The statements that fill an empty store (bar assets and reviewers) with ``n`` edits."""
    persons = _array([p[0] for p in photos["person"]])
    garments = _array([p[0] for p in photos["garment"]])
    characters = _array([p[0] for p in photos["character"]])
    pick = "{arr}[1 + i % cardinality({arr})]"
    ts = "now(), now()"
    return [
        "SELECT setseed(0.42)",
        f"""INSERT INTO item_sets (id, key, recipe, seed, created_at)
            SELECT i, 'bench-' || i, CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END, i, now()
            FROM generate_series(1, {n}) i""",
        f"""INSERT INTO item_set_assets (item_set_id, position, asset_id, role)
            SELECT i, 0, CASE WHEN i % 4 = 0 THEN {pick.format(arr=characters)} ELSE {pick.format(arr=persons)} END,
                   CASE WHEN i % 4 = 0 THEN 'character' ELSE 'person' END FROM generate_series(1, {n}) i
            UNION ALL
            SELECT i, 1, {pick.format(arr=garments)}, 'garment' FROM generate_series(1, {n}) i WHERE i % 4 <> 0""",
        # 3 jobs per edit: vl (id i), edit (n + i), score (2n + i); the last score jobs are queued
        f"""INSERT INTO jobs (id, stage, status, key, payload, item_set_id, parent_id, attempts, max_attempts,
                              created_at, updated_at, started_at, finished_at, worker, reason, error_type)
            SELECT i, 'vl', 'succeeded', 'vl:bench:' || i, json_build_object('item_set_id', i), i, NULL, 1, 3,
                   {ts}, now(), now(), 'bench', NULL, NULL FROM generate_series(1, {n}) i
            UNION ALL
            SELECT {n} + i, 'edit', 'succeeded', 'edit:bench:' || i, json_build_object('analysis_id', i), i, i, 1, 3,
                   {ts}, now(), now(), 'bench', NULL, NULL FROM generate_series(1, {n}) i
            UNION ALL
            SELECT 2 * {n} + i, 'score', st, 'score:bench:' || i, json_build_object('edit_id', i), i, {n} + i,
                   CASE WHEN st = 'queued' THEN 0 ELSE 1 END, 3, {ts},
                   CASE WHEN st = 'queued' THEN NULL ELSE now() END, CASE WHEN st = 'queued' THEN NULL ELSE now() END,
                   CASE WHEN st = 'queued' THEN NULL ELSE 'bench' END,
                   CASE WHEN st = 'failed' THEN 'score.edit_image_missing' END,
                   CASE WHEN st = 'failed' THEN 'input' END
            FROM (SELECT i, CASE WHEN i > {n} - {queued} THEN 'queued' WHEN i % 100 = 7 THEN 'failed'
                                 ELSE 'succeeded' END AS st FROM generate_series(1, {n}) i) q""",
        f"""INSERT INTO analyses (id, job_id, item_set_id, recipe, schema_version, prompt_version, backend, model_id,
                                  params, raw_text, data, edit_prompt, confidence, feasibility, timings, created_at)
            SELECT i, i, i, CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END, 'bench', 'bench', 'bench', 'bench/vl',
                   '{{}}', '{{}}', '{{}}', 'put on the garment, ' || i, round(random()::numeric, 3),
                   (ARRAY['high', 'medium', 'low'])[1 + i % 3], '{{}}', now()
            FROM generate_series(1, {n}) i""",
        f"""INSERT INTO edits (id, job_id, analysis_id, item_set_id, origin, edit_prompt, backend, model_id, params,
                               seed, output_uri, output_sha256, width, height, timings, created_at)
            SELECT i, {n} + i, i, i, 'pipeline', 'put on the garment, ' || i, 'bench', 'bench/edit', '{{}}', i,
                   o.uri, o.sha256, o.width, o.height, '{{}}', now()
            FROM generate_series(1, {n}) i JOIN bench_outputs o ON o.k = i % (SELECT count(*) FROM bench_outputs)""",
        f"""INSERT INTO scores (edit_id, scorer, metrics, params, job_id, error_kind, error_code, created_at, updated_at)
            SELECT i, s.scorer,
                   CASE WHEN s.scorer = 'identity' AND i % 97 = 0 THEN '{{}}'::json
                        WHEN s.scorer = 'change' THEN json_build_object(
                            'ssim', round((0.5 + 0.5 * random())::numeric, 4), 'mad', round((0.3 * random())::numeric, 4))
                        WHEN s.scorer = 'identity' THEN json_build_object(
                            'identity_distance', round((0.2 + 0.6 * random())::numeric, 4), 'faces_input', 1,
                            'faces_edited', CASE WHEN i % 53 = 0 THEN 0 ELSE 1 END)
                        WHEN s.scorer = 'clip' THEN json_build_object(
                            'clip_image', round((0.6 + 0.4 * random())::numeric, 4),
                            'clip_direction', round((0.1 + 0.4 * random())::numeric, 4),
                            'clip_text', round((0.15 + 0.2 * random())::numeric, 4))
                        WHEN s.scorer = 'dino' THEN json_build_object('dino_similarity', round((0.3 + 0.7 * random())::numeric, 4))
                        ELSE json_build_object('garment_max', round((0.2 + 0.6 * random())::numeric, 4)) END,
                   '{{}}', 2 * {n} + i,
                   CASE WHEN s.scorer = 'identity' AND i % 97 = 0 THEN 'input' END,
                   CASE WHEN s.scorer = 'identity' AND i % 97 = 0 THEN 'identity.no_face_input' END, {ts}
            FROM generate_series(1, {n}) i
            CROSS JOIN (VALUES {", ".join(f"('{s}')" for s in SCORERS)}) s(scorer)""",
        f"""INSERT INTO decisions (id, edit_id, decision, reasons, failed, thresholds, margin, decided_at)
            SELECT i, i, CASE WHEN i % 3 = 0 THEN 'rejected' ELSE 'accepted' END,
                   CASE WHEN i % 3 = 0 THEN '["identity_lost"]'::json ELSE '[]'::json END, '{{}}',
                   json_build_object('recipe', CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END),
                   round(random()::numeric, 4), now()
            FROM generate_series(1, {n}) i""",
        # two reviewers on 2 % of the edits
        f"""INSERT INTO reviews (reviewer_id, edit_id, decision, tags, created_at)
            SELECT r.id, i, CASE WHEN random() < 0.3 THEN 'rejected' ELSE 'accepted' END, '[]', now()
            FROM generate_series(1, {n}) i CROSS JOIN (SELECT id FROM reviewers) r WHERE i % 50 = 1""",
        *(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))"
          for t in ("item_sets", "jobs", "analyses", "edits", "scores", "decisions", "reviews")),
    ]


def build_store(db: Any, n: int, photos: dict[str, list[tuple[int, str, str, int, int]]], queued: int) -> str:
    """Fill the store; returns a script token of reviewer ``ann``."""
    from sqlalchemy import text

    from common.review import auth

    with db.session() as s:
        auth.add_reviewer(s, "ann", PASSWORD)
        auth.add_reviewer(s, "ben", PASSWORD)
        token = auth.new_token(s, "ann")
        s.execute(text("CREATE TEMP TABLE bench_outputs (k int, uri text, sha256 text, width int, height int) "
                       "ON COMMIT DROP"))
        outputs = [*photos["person"], *photos["character"]]
        s.execute(text("INSERT INTO bench_outputs VALUES (:k, :uri, :sha, :w, :h)"),
                  [{"k": k, "uri": p[1], "sha": p[2], "w": p[3], "h": p[4]} for k, p in enumerate(outputs)])
        for stmt in build_sql(n, photos, queued):
            s.execute(text(stmt))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))  # statistics and visibility, as autovacuum keeps them
    return token


# --- measuring ------------------------------------------------------------------------------


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm: connections, caches, compiled statements
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def timed_command(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, dict[str, Any]]:
    """Run ``argv`` under ``/usr/bin/time -v``: (wall s, peak RSS MiB, its JSON output)."""
    t = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if rss is None:
        raise RuntimeError(f"no peak memory in /usr/bin/time's report: {done.stderr[-2000:]}")
    out = done.stdout.strip().splitlines()
    return round(wall, 2), round(int(rss.group(1)) / 1024, 1), json.loads(out[-1]) if out else {}


def measure_size(n: int, admin_url: str, data_dir: Path, repeat: int, keep: bool, timeout: float,
                 log: Callable[[str], None]) -> dict[str, float]:
    from fastapi.testclient import TestClient
    from isolation import clean_env
    from sqlalchemy import text

    from common.core.settings import get_settings, reset_settings
    from common.devkit.scratch import create_scratch_database, drop_scratch_database
    from common.observability.collector import StoreCollector
    from common.observability.status import status_report
    from common.review.app import create_app
    from common.store import jobs as jobstore
    from common.store.db import get_database, reset_databases
    from common.store.storage import get_storage

    url = create_scratch_database(admin_url, "synthpipe_bench_scale")
    os.environ["SYNTHPIPE_DATABASE_URL"] = url
    reset_settings()
    reset_databases()
    r: dict[str, float] = {}
    try:
        settings = get_settings()
        db = get_database(url, ensure=False, settings=settings)
        db.upgrade()
        storage = get_storage(settings.storage_url)
        photos = ingest_photos(db, storage, settings, data_dir / f"photos-{n}")
        claims = repeat + 1
        t = time.perf_counter()
        token = build_store(db, n, photos, queued=max(n // 50, 8 * claims + 8))
        r["build the store (SQL)"] = round(time.perf_counter() - t, 1)
        with db.engine.connect() as conn:
            r["database size"] = round(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
                                       / 2**20, 1)
        log(f"{n} edits: built in {r['build the store (SQL)']} s, {r['database size']} MiB")

        r["claim 8 jobs"] = median_ms(lambda: jobstore.claim(db, "score", 8, worker="bench"), repeat)
        r["status"] = median_ms(lambda: status_report(db), repeat)
        collector = StoreCollector(db, settings)
        r["metrics scrape"] = median_ms(lambda: list(collector.collect()), repeat)
        app = create_app(db, storage, settings.review)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            headers = {"Authorization": f"Bearer {token}"}

            def get(path: str) -> Callable[[], Any]:
                def call() -> Any:
                    answer = client.get(path, headers=headers)
                    if answer.status_code != 200:
                        raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:500]}")
                    return answer
                return call

            for name, path in REVIEW_REQUESTS.items():
                r[name] = median_ms(get(path), repeat)
        log(f"{n} edits: API done")

        env = clean_env(data_dir=data_dir)
        env["SYNTHPIPE_DATABASE_URL"] = url
        cli = [sys.executable, "-m", "common.cli"]
        wall, rss, report = timed_command([*cli, "score", "--redecide", "--json"], env, timeout)
        if report.get("decided") != n:
            raise RuntimeError(f"score --redecide decided {report.get('decided')} of {n} edits")
        r["score --redecide"], r["score --redecide peak RSS"] = wall, rss
        log(f"{n} edits: redecide {wall} s")
        for layout, args in EXPORT_LAYOUTS.items():
            out = Path(tempfile.mkdtemp(prefix=f"export-{layout}-", dir=data_dir))
            shutil.rmtree(out)
            wall, rss, _ = timed_command([*cli, "export", str(out), *args, "--json"], env, timeout)
            r[f"export {layout}"], r[f"export {layout} peak RSS"] = wall, rss
            shutil.rmtree(out, ignore_errors=True)
            log(f"{n} edits: export {layout} {wall} s, {rss} MiB")
    finally:
        reset_databases()
        if keep:
            log(f"kept the database of {n} edits: {url}")
        else:
            drop_scratch_database(admin_url, url)
    return r


# --- reporting ------------------------------------------------------------------------------


def growth_per_10x(sizes: list[int], values: list[float | None]) -> float | None:
    """How many times a figure grows per 10× edits, from the smallest to the largest size."""
    pairs = [(n, v) for n, v in zip(sizes, values, strict=True) if v is not None and v > 0]
    if len(pairs) < 2 or pairs[-1][0] == pairs[0][0]:
        return None
    (n0, v0), (n1, v1) = pairs[0], pairs[-1]
    return round((v1 / v0) ** (1 / math.log10(n1 / n0)), 2)


def markdown(results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    lines = ["| operation | " + " | ".join(f"{n:,} edits" for n in sizes) + " | growth per 10× |",
             "|---|" + "---:|" * (len(sizes) + 1)]
    for name, unit in operations():
        values = [results[n].get(name) for n in sizes]
        growth = growth_per_10x(sizes, values)
        cells = ["–" if v is None else f"{v:g} {unit}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'–' if growth is None else f'{growth:g}×'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000", help="edits per store, comma-separated")
    p.add_argument("--full", action="store_true", help="add a store of 1,000,000 edits")
    p.add_argument("--smoke", action="store_true", help="one store of 500 edits, every operation once (CI)")
    p.add_argument("--repeat", type=int, default=7, help="requests per median")
    p.add_argument("--keep", action="store_true", help="keep the scratch databases (their URLs are printed)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one CLI command may take")
    p.add_argument("--pg-url", default=os.environ.get("SYNTHPIPE_BENCH_PG_URL",
                                                      "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
                   help="admin URL: scratch databases are made next to it")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    sizes = [500] if args.smoke else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.full and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    repeat = 1 if args.smoke else args.repeat
    from isolation import isolate

    data_dir = isolate("bench-scale-")  # own data dir, storage and settings; none of the caller's

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[int, dict[str, float]] = {}
    for n in sorted(sizes):
        results[n] = measure_size(n, args.pg_url, data_dir, repeat, args.keep, args.timeout, log)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"benchmark": "scale", "machine": machine, "repeat": repeat,
                          "units": dict(operations()), "operations": [name for name, _ in operations()],
                          "results": {str(n): r for n, r in results.items()}}))
    else:
        print(f"{machine}; PostgreSQL; medians of {repeat}\n")
        print(markdown(results))


if __name__ == "__main__":
    main()
