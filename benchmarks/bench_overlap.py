"""Model-busy share of the VL stage's wall time, serial and overlapped, in one run.

    python benchmarks/bench_overlap.py                   # tiny Qwen2.5-VL on this machine's CPU
    python benchmarks/bench_overlap.py --device cuda     # the same on a card
    python benchmarks/bench_overlap.py --quick --json    # a few jobs, one JSON line (gpu_check.py)

The same jobs (ingested photos, paired try-on item sets) run through the local runner twice per
round, once batch after batch (``jobs.overlap`` off: prepare, model, finish, record in turn) and
once overlapped (on: batch k+1 claimed and prepared and batch k-1 recorded while the model runs
batch k), each on a fresh database. The model is loaded and warmed first; its busy time is the
time inside the backend's ``run_batch``. Rounds alternate the two modes; the best round of each
(highest share) is reported, so other load on the machine can only lower a share, not raise
it; throughput is compared between each mode's fastest round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--photo-side", type=int, default=1024, help="long side of the ingested photos (decoded per job)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 jobs, one round")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.rounds = 8, 1

    from common import samples
    from common.db import get_database
    from common.ingest import ingest
    from common.pairing import pair
    from common.runner import StageContext, run_stage
    from common.settings import get_settings, reset_settings
    from common.storage import get_storage
    from common.tinymodels import build_one
    from worker_vl.backends.qwen import QwenVLBackend

    busy = {"s": 0.0}
    plain_run = QwenVLBackend.run_batch

    def timed(self: Any, items: list[Any]) -> list[Any]:
        started = time.perf_counter()
        try:
            return plain_run(self, items)
        finally:
            busy["s"] += time.perf_counter() - started

    QwenVLBackend.run_batch = timed  # type: ignore[method-assign]

    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    model = build_one("vl", tmp / "models")
    side = args.photo_side
    photos: dict[str, Path] = {}
    for role, draw, size in (("person", samples.person, (side * 3 // 4, side)),
                             ("garment", samples.garment, (side * 3 // 4, side * 3 // 4))):
        folder = photos[role] = tmp / "photos" / role
        folder.mkdir(parents=True)
        for i in range(max(2, args.jobs // 2)):
            (folder / f"{role}-{i:03d}.jpg").write_bytes(samples.encode(draw(3000 + i, size=size)))
    os.environ.update({
        "SYNTHPIPE_VL_MODEL": str(model), "SYNTHPIPE_VL__DEVICE": args.device,
        "SYNTHPIPE_VL__BATCH_SIZE": str(args.batch_size), "SYNTHPIPE_VL__MAX_NEW_TOKENS": str(args.max_new_tokens),
        "SYNTHPIPE_VL__MIN_PIXELS": str(4 * 28 * 28), "SYNTHPIPE_VL__MAX_PIXELS": str(16 * 28 * 28),
        "SYNTHPIPE_PAIRING__AUTO_PAIR": "false",
    })

    def fresh(mode: str, n: int) -> StageContext:
        os.environ["SYNTHPIPE_DATA_DIR"] = str(tmp / f"{mode}-{n}")
        os.environ["SYNTHPIPE_JOBS__OVERLAP"] = "true" if mode == "overlapped" else "false"
        reset_settings()
        settings = get_settings()
        db = get_database(settings.database_url)
        ctx = StageContext(settings=settings, db=db, storage=get_storage(settings.storage_url))
        for role, folder in photos.items():
            ingest(folder, role, db=db, storage=ctx.storage, settings=settings)
        with db.session() as s:
            pair(s, settings, "tryon", limit=args.jobs, seed=1)
        return ctx

    # load and warm the model (grammar compile, first-call costs) outside the timed runs
    warm = fresh("warm", 0)
    run_stage("vl", warm, max_jobs=args.batch_size)
    results: dict[str, list[dict[str, float]]] = {"serial": [], "overlapped": []}
    for n in range(args.rounds):
        for mode in ("serial", "overlapped"):
            ctx = fresh(mode, n)
            busy["s"] = 0.0
            started = time.perf_counter()
            stats = run_stage("vl", ctx)
            wall = time.perf_counter() - started
            results[mode].append({"wall_s": round(wall, 3), "model_s": round(busy["s"], 3),
                                  "model_busy_share": round(busy["s"] / wall, 3), "jobs": stats.claimed,
                                  "jobs_per_s": round(stats.claimed / wall, 3)})
    best = {mode: max(rows, key=lambda r: r["model_busy_share"]) for mode, rows in results.items()}
    fastest = {mode: max(r["jobs_per_s"] for r in rows) for mode, rows in results.items()}
    summary = {"benchmark": "overlap", "stage": "vl", "device": args.device, "jobs": args.jobs,
               "batch_size": args.batch_size, "photo_side": side, "max_new_tokens": args.max_new_tokens,
               "rounds": results, "serial_busy_share": best["serial"]["model_busy_share"],
               "overlapped_busy_share": best["overlapped"]["model_busy_share"],
               "busy_share_ratio": round(best["overlapped"]["model_busy_share"] / best["serial"]["model_busy_share"], 3),
               "best_jobs_per_s": fastest, "throughput_ratio": round(fastest["overlapped"] / fastest["serial"], 3)}
    if not args.json:
        print(f"VL stage, {args.jobs} jobs, batch {args.batch_size}, {side} px photos, device {args.device}, "
              f"best of {args.rounds} round(s)")
        print(f"{'mode':<11} {'wall s':>8} {'model s':>8} {'busy share':>11} {'jobs/s':>8}")
        for mode, r in best.items():
            print(f"{mode:<11} {r['wall_s']:>8.2f} {r['model_s']:>8.2f} {r['model_busy_share']:>11.1%} {r['jobs_per_s']:>8.2f}")
        print(f"overlapped / serial: busy share {summary['busy_share_ratio']}x, best throughput "
              f"{summary['throughput_ratio']}x ({fastest['overlapped']} vs {fastest['serial']} jobs/s)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
