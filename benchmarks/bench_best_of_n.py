"""Best-of-N: acceptance per input set and edit-model seconds per accepted edit at N = 1, 2, 4.

    python benchmarks/bench_best_of_n.py                          # tiny models, 8 sets, N = 1,2,4
    python benchmarks/bench_best_of_n.py --smoke --json           # 2 sets, N = 1,2, one JSON line (CI)
    python benchmarks/bench_best_of_n.py --size real --device cuda --photos DIR --sets 50
                                                                  # the configured real checkpoints

One local run of the whole pipeline (ingest → pair → vl → edit → score, with the selection step)
at the largest N. A set's candidate k has the same key, seed and backend whatever N is (candidate
0 is exactly what N = 1 makes), so the figures at a smaller N are read from candidates 0..N-1 of
that run instead of making the same images again. Per N: the sets with at least one accepted
candidate (acceptance per input set), the accepted candidates per set, and the edit model's wall
seconds (the ``seconds`` each edit records: its share of its batch's model call) summed over the
candidates made, per set that ends with an accepted edit (the one its selection keeps). On a CPU
those are CPU seconds of the edit model, not GPU seconds; ``--device cuda`` makes them GPU ones.

``--size tiny`` (the default) builds the test suite's tiny random checkpoints (Qwen2.5-VL,
InstructPix2Pix, Qwen-Image-Edit Plus), draws sample photos, scores with the ``change`` scorer
alone against fixed thresholds (:data:`TINY_THRESHOLDS`): random weights make noise, so the
acceptance figures are plumbing, not quality. ``--size real`` uses the default checkpoints (hub
ids, downloaded on first use) or those given with ``--set SYNTHPIPE_VL_MODEL=...`` (the benchmark
ignores the caller's own ``SYNTHPIPE_*`` settings), the default scorers with the judge, and the
default thresholds; ``--photos`` names a folder with ``person/`` and ``garment/`` photos (default:
the drawn samples).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

#: fixed thresholds of the tiny run: the change scorer alone decides (the other thresholds apply
#: only to metrics that are computed): an edit must change the photo's structure (SSIM at most
#: 0.28) without recolouring all of it (colour MAD at most 0.2)
TINY_THRESHOLDS = {"SYNTHPIPE_SCORE__TRYON__MAD_MAX": "0.2", "SYNTHPIPE_SCORE__TRYON__SSIM_MAX": "0.28"}


def _settings(args: argparse.Namespace, models: Path) -> dict[str, str]:
    n_max = max(args.n)
    env = {"SYNTHPIPE_EDIT__CANDIDATES": str(n_max), "SYNTHPIPE_EDIT__ENSEMBLE": args.ensemble,
           "SYNTHPIPE_EDIT__DEVICE": args.device, "SYNTHPIPE_VL__DEVICE": args.device,
           "SYNTHPIPE_SCORE__DEVICE": args.device, "SYNTHPIPE_PAIRING__AUTO_PAIR": "false",
           "SYNTHPIPE_PAIRING__MAX_GARMENTS": "2"}
    if args.size == "tiny":
        from common.devkit.tinymodels import build_one, settings_for

        wanted = ["vl", "edit"] + (["edit-plus"] if "qwen-image-edit-plus" in args.ensemble else []) + (
            ["flux-kontext"] if "flux-kontext" in args.ensemble else [])
        env.update(settings_for({name: build_one(name, models) for name in wanted}))
        env.update({"SYNTHPIPE_SCORE__SCORERS": "change", "SYNTHPIPE_EDIT__STEPS": str(args.steps),
                    "SYNTHPIPE_EDIT__PLUS_STEPS": str(args.steps), **TINY_THRESHOLDS})
    else:
        env["SYNTHPIPE_SCORE__SCORERS"] = "change,identity,clip,dino,garment,judge"
    for item in args.set:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def figures(per_set: list[list[dict[str, Any]]], n: int) -> dict[str, Any]:
    """Acceptance and edit seconds at ``n`` from each set's candidates (``candidate``, ``decision``,
    ``seconds``): what a run at N = ``n`` would have made and decided."""
    sets = len(per_set)
    made = [[c for c in cands if c["candidate"] < n] for cands in per_set]
    with_accepted = sum(any(c["decision"] == "accepted" for c in m) for m in made)
    accepted = sum(c["decision"] == "accepted" for m in made for c in m)
    seconds = sum(c["seconds"] for m in made for c in m)
    return {"n": n, "sets": sets, "candidates": sum(len(m) for m in made), "sets_with_accepted": with_accepted,
            "acceptance_per_set": round(with_accepted / sets, 4) if sets else None,
            "accepted_candidates_per_set": round(accepted / sets, 4) if sets else None,
            "edit_model_s": round(seconds, 4),
            "edit_model_s_per_accepted_edit": round(seconds / with_accepted, 4) if with_accepted else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sets", type=int, default=8, help="input sets (try-on: a person photo and garments)")
    ap.add_argument("--n", type=lambda t: sorted({int(x) for x in t.split(",")}), default=[1, 2, 4],
                    help="candidates per set to report, comma-separated (one run at the largest)")
    ap.add_argument("--ensemble", default="instruct-pix2pix,qwen-image-edit-plus",
                    help="edit.ensemble: the backends candidates take in turn")
    ap.add_argument("--steps", type=int, default=4, help="tiny: denoising steps of each editor")
    ap.add_argument("--photos", type=Path, default=None, help="a folder with person/ and garment/ photos")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a SYNTHPIPE_* setting for the run (e.g. SYNTHPIPE_VL_MODEL=/models/qwen-vl)")
    ap.add_argument("--smoke", action="store_true", help="2 sets, N = 1,2, 1 step: the CI run")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()
    if args.smoke:
        args.sets, args.n, args.steps = 2, [1, 2], 1
    from isolation import isolate

    data_dir = isolate("bench-best-of-n-")  # own data dir, database and storage; none of the caller's settings
    os.environ.update(_settings(args, data_dir / "models"))

    from sqlalchemy import select

    from common.core.settings import get_settings
    from common.dataset.ingest import ingest
    from common.devkit import samples
    from common.domain.pairing import pair
    from common.domain.selection import summary
    from common.runtime.runner import StageContext, run_all
    from common.store.db import get_database
    from common.store.rows import Decision, Edit, Selection
    from common.store.storage import get_storage

    settings = get_settings()
    ctx = StageContext(settings=settings, db=get_database(settings.database_url),
                       storage=get_storage(settings.storage_url))
    photos = args.photos
    if photos is None:
        photos = Path(tempfile.mkdtemp(dir=data_dir))
        samples.write_samples(photos, persons=args.sets, garments=max(2, args.sets), seed=11)
    for role in ("person", "garment"):
        ingest(photos / role, role, db=ctx.db, storage=ctx.storage, settings=settings)
    with ctx.db.session() as s:
        pair(s, settings, "tryon", limit=args.sets, seed=1)
    started = time.perf_counter()
    ran = run_all(ctx, ["vl", "edit", "score"])
    wall = time.perf_counter() - started

    with ctx.db.session() as s:
        rows = s.execute(select(Edit.analysis_id, Edit.candidate, Edit.backend, Edit.timings, Decision.decision)
                         .outerjoin(Decision, Decision.edit_id == Edit.id).where(Edit.candidate.is_not(None))
                         .order_by(Edit.analysis_id, Edit.candidate)).all()
        selections = {a: (n, e) for a, n, e in s.execute(select(Selection.analysis_id, Selection.candidates,
                                                                 Selection.expected))}
        store = summary(s)
    per_set: dict[int, list[dict[str, Any]]] = {}
    for analysis_id, k, backend, timings, decision in rows:
        per_set.setdefault(analysis_id, []).append({"candidate": k, "backend": backend, "decision": decision,
                                                    "seconds": float((timings or {}).get("seconds", 0.0))})
    sets = list(per_set.values())
    report = {"benchmark": "best_of_n", "size": args.size, "device": args.device, "ensemble": args.ensemble,
              "steps": args.steps if args.size == "tiny" else None,
              "thresholds": TINY_THRESHOLDS if args.size == "tiny" else "defaults",
              "scorers": settings.score.scorers, "analysed_sets": len(sets),
              "selected_sets": len(selections),
              "all_candidates_scored": all(n == e for n, e in selections.values()),
              "stages": {stage: r.by_status for stage, r in ran.items()}, "wall_s": round(wall, 2),
              "rows": [figures(sets, n) for n in args.n], "selection_summary": store,
              "note": "tiny random weights: plumbing, not quality" if args.size == "tiny" else ""}
    if not args.json:
        print(f"best-of-N, {args.size} models on {args.device}, ensemble {args.ensemble}, {len(sets)} analysed sets, "
              f"scorers {','.join(settings.score.scorers)}; one run at N={max(args.n)} in {wall:.1f} s")
        print(f"{'N':>3} {'candidates':>10} {'sets acc.':>9} {'acceptance':>10} {'acc./set':>8} {'edit s':>8} "
              f"{'edit s per accepted':>20}")
        for r in report["rows"]:
            per = r["edit_model_s_per_accepted_edit"]
            print(f"{r['n']:>3} {r['candidates']:>10} {r['sets_with_accepted']:>9} {r['acceptance_per_set']:>10.2%} "
                  f"{r['accepted_candidates_per_set']:>8.2f} {r['edit_model_s']:>8.2f} "
                  f"{'-' if per is None else f'{per:.3f}':>20}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
