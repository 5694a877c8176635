"""Job-store throughput: claim + record round trips per second, SQLite and PostgreSQL.

    python benchmarks/bench_claim.py                 # 2000 jobs, 1 and 2 claimer processes
    python benchmarks/bench_claim.py --jobs 5000 --batch 10 --pg-url postgresql+psycopg://postgres@127.0.0.1/postgres

Each claimer loops claim(n) → record(succeeded) with the real job store until the queue is
empty; the table shows jobs/s for the whole run and checks no job was handed out twice.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _claimer(url: str, batch: int, out: str) -> None:
    from common.store import jobs
    from common.store.db import get_database
    from common.store.jobs import Outcome

    db = get_database(url, ensure=False)
    got: list[int] = []
    while claimed := jobs.claim(db, "vl", batch, lease_s=60):
        for job in claimed:
            jobs.record(db, job, Outcome.ok())
        got += [j.id for j in claimed]
    Path(out).write_text(json.dumps(got))


def run(url: str, n_jobs: int, procs: int, batch: int, tmp: Path) -> dict[str, float | int | str]:
    from common.store import jobs
    from common.store.db import Database

    db = Database(url)
    db.upgrade()
    with db.session() as s:
        for i in range(n_jobs):
            jobs.enqueue(s, "vl", f"bench:{i}", {}, max_attempts=3)
    db.dispose()
    ctx = mp.get_context("spawn")
    outs = [tmp / f"{uuid.uuid4().hex}.json" for _ in range(procs)]
    workers = [ctx.Process(target=_claimer, args=(url, batch, str(o))) for o in outs]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    got = [i for o in outs for i in json.loads(o.read_text())]
    assert len(got) == len(set(got)) == n_jobs, "a job was claimed twice or lost"
    return {"processes": procs, "jobs": n_jobs, "seconds": round(seconds, 2), "jobs_per_s": round(n_jobs / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-claim-")  # own data dir, database and storage; none of the caller's settings
    from common.devkit.scratch import scratch_database

    tmp = Path(tempfile.mkdtemp(prefix="bench-claim-"))
    rows = []
    for procs in [int(p) for p in args.processes.split(",")]:
        rows.append({"db": "sqlite", **run(f"sqlite:///{tmp / f'claim-{procs}.db'}", args.jobs, procs, args.batch, tmp)})
        with scratch_database(args.pg_url, "synthpipe_bench") as url:
            rows.append({"db": "postgresql", **run(url, args.jobs, procs, args.batch, tmp)})
    print(f"claim batch {args.batch}, claim + record per job, no model")
    print(f"{'db':<11} {'procs':>5} {'jobs':>6} {'seconds':>8} {'jobs/s':>8}")
    for r in rows:
        print(f"{r['db']:<11} {r['processes']:>5} {r['jobs']:>6} {r['seconds']:>8} {r['jobs_per_s']:>8}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
