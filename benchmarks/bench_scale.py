"""The store's everyday operations at 10k, 100k and (``--full``) 1M edits, on PostgreSQL.

    python benchmarks/bench_scale.py                 # 10k and 100k edits
    python benchmarks/bench_scale.py --full          # and 1M (about 9 GB of database)
    python benchmarks/bench_scale.py --smoke --json  # 500 edits, every operation once (CI)
    python benchmarks/bench_scale.py --candidates 3 --sizes 30000,300000   # best-of-N stores

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

``--candidates N`` (N ≥ 2) builds best-of-N stores instead: a size still counts edits, made as
size / N analysed sets of N candidate edits each (``edits.candidate`` 0..N-1, each with its own edit
job, key, seed and backend of a two-backend ensemble), 6 scores per edit (the 5 above and the
judge's ``judge_overall``, which ranks candidates by default) and a mixed decision, and one
``selections`` row per set: a placeholder written by SQL, then selected by
:func:`common.domain.selection.reselect_all` in this process (timed on its own row); a person
overrules 1 % of the sets. It then measures the same operations (plus a set page), ``score
--redecide`` (which re-selects every set), and besides the default exports (``--decision
accepted``) ``--format preference`` and ``--decision rejected`` (:data:`CANDIDATE_EXPORTS`), each
with the rows it wrote. Without the option nothing changes.
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
#: best-of-N stores (``--candidates``) are exported these ways too, besides :data:`EXPORT_LAYOUTS`
CANDIDATE_EXPORTS: dict[str, list[str]] = {
    "preference": ["--format", "preference"],
    "rejected imagefolder": ["--format", "imagefolder", "--decision", "rejected"],
}
#: the ensemble the candidates of a best-of-N store take in turn (candidate k: entry k mod 2)
ENSEMBLE = ("instruct-pix2pix", "qwen-image-edit-plus")
#: the set page request of a best-of-N store (``{a}``: a set in the middle of the store)
SET_PAGE = "set page (/api/sets/{a})"
#: the review API requests, by the row they are reported under
REVIEW_REQUESTS: dict[str, str] = {
    "review queue page (least certain, 20)": "/api/items?sort=uncertain&limit=20",
    "review queue filtered (ai=rejected, 20)": "/api/items?ai=rejected&limit=20",
    "/api/stats": "/api/stats",
}
SCORERS = ("change", "identity", "clip", "dino", "garment")
PASSWORD = "bench-scale-password"


def export_layouts(candidates: int = 1) -> dict[str, list[str]]:
    """The exports measured at every size: :data:`EXPORT_LAYOUTS`, and for best-of-N stores
    :data:`CANDIDATE_EXPORTS` too."""
    return {**EXPORT_LAYOUTS, **CANDIDATE_EXPORTS} if candidates > 1 else dict(EXPORT_LAYOUTS)


def operations(candidates: int = 1) -> list[tuple[str, str]]:
    """Every row of the table, with its unit, in order."""
    best_of_n = candidates > 1
    ops = [("build the store (SQL)", "s")]
    if best_of_n:
        ops += [("analysed sets", "sets"), ("select every set (reselect_all, in-process)", "s")]
    ops += [("database size", "MiB"), ("claim 8 jobs", "ms"), ("status", "ms"), ("metrics scrape", "ms")]
    ops += [(name, "ms") for name in REVIEW_REQUESTS]
    if best_of_n:
        ops += [(SET_PAGE, "ms")]
    ops += [("score --redecide", "s"), ("score --redecide peak RSS", "MiB")]
    if best_of_n:
        ops += [("score --redecide: sets re-selected", "sets")]
    for layout in export_layouts(candidates):
        ops += [(f"export {layout}", "s"), (f"export {layout} peak RSS", "MiB")]
        if best_of_n:
            ops += [(f"export {layout} rows", "rows")]
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


def build_sql_candidates(n: int, candidates: int, photos: dict[str, list[tuple[int, str, str, int, int]]],
                         queued: int) -> list[str]:
    """The statements that fill an empty store (bar assets and reviewers) with ``n`` edits, made as
    ``n // candidates`` analysed sets of ``candidates`` candidate edits each. Edit ``e`` is candidate
    ``(e - 1) % N`` of analysis ``(e - 1) / N + 1`` (a set's candidates have neighbouring ids, as
    when they are queued together); each has its own edit job (the best-of-N payload), seed and
    backend (:data:`ENSEMBLE` in turn), 6 scores (the judge's too) and a decision; one placeholder
    ``selections`` row per set (:func:`build_store` selects them), a person's pick on 1 % of sets."""
    c = candidates
    a = n // c
    persons = _array([p[0] for p in photos["person"]])
    garments = _array([p[0] for p in photos["garment"]])
    characters = _array([p[0] for p in photos["character"]])
    pick = "{arr}[1 + i % cardinality({arr})]"
    ts = "now(), now()"
    ensemble = "(ARRAY[" + ", ".join(f"'{b}'" for b in ENSEMBLE) + "])"
    # edits: e = 1..n, its analysis i and candidate number k
    edits = f"(SELECT e, (e - 1) / {c} + 1 AS i, (e - 1) % {c} AS k FROM generate_series(1, {n}) e) x"
    scorers = (*SCORERS, "judge")
    return [
        "SELECT setseed(0.42)",
        f"""INSERT INTO item_sets (id, key, recipe, seed, created_at)
            SELECT i, 'bench-' || i, CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END, i, now()
            FROM generate_series(1, {a}) i""",
        f"""INSERT INTO item_set_assets (item_set_id, position, asset_id, role)
            SELECT i, 0, CASE WHEN i % 4 = 0 THEN {pick.format(arr=characters)} ELSE {pick.format(arr=persons)} END,
                   CASE WHEN i % 4 = 0 THEN 'character' ELSE 'person' END FROM generate_series(1, {a}) i
            UNION ALL
            SELECT i, 1, {pick.format(arr=garments)}, 'garment' FROM generate_series(1, {a}) i WHERE i % 4 <> 0""",
        # jobs: vl (id i, one per set), edit (a + e, one per candidate), score (a + n + e); the last
        # score jobs are queued
        f"""INSERT INTO jobs (id, stage, status, key, payload, item_set_id, parent_id, attempts, max_attempts,
                              created_at, updated_at, started_at, finished_at, worker, reason, error_type)
            SELECT i, 'vl', 'succeeded', 'vl:bench:' || i, json_build_object('item_set_id', i), i, NULL, 1, 3,
                   {ts}, now(), now(), 'bench', NULL, NULL FROM generate_series(1, {a}) i
            UNION ALL
            SELECT {a} + e, 'edit', 'succeeded', 'edit:bench-' || i || CASE WHEN k = 0 THEN '' ELSE ':' || 'c' || k END,
                   json_build_object('analysis_id', i, 'candidate', k, 'candidates', {c}, 'set_key', 'bench-' || i,
                                     'backend', {ensemble}[1 + k % {len(ENSEMBLE)}], 'seed', 1000 * i + k),
                   i, i, 1, 3, {ts}, now(), now(), 'bench', NULL, NULL FROM {edits}
            UNION ALL
            SELECT {a} + {n} + e, 'score', st, 'score:bench:' || e, json_build_object('edit_id', e), i, {a} + e,
                   CASE WHEN st = 'queued' THEN 0 ELSE 1 END, 3, {ts},
                   CASE WHEN st = 'queued' THEN NULL ELSE now() END, CASE WHEN st = 'queued' THEN NULL ELSE now() END,
                   CASE WHEN st = 'queued' THEN NULL ELSE 'bench' END,
                   CASE WHEN st = 'failed' THEN 'score.edit_image_missing' END,
                   CASE WHEN st = 'failed' THEN 'input' END
            FROM (SELECT e, i, CASE WHEN e > {n} - {queued} THEN 'queued' WHEN e % 100 = 7 THEN 'failed'
                                    ELSE 'succeeded' END AS st FROM {edits}) q""",
        f"""INSERT INTO analyses (id, job_id, item_set_id, recipe, schema_version, prompt_version, backend, model_id,
                                  params, raw_text, data, edit_prompt, confidence, feasibility, timings, created_at)
            SELECT i, i, i, CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END, 'bench', 'bench', 'bench', 'bench/vl',
                   '{{}}', '{{}}', '{{}}', 'put on the garment, ' || i, round(random()::numeric, 3),
                   (ARRAY['high', 'medium', 'low'])[1 + i % 3], '{{}}', now()
            FROM generate_series(1, {a}) i""",
        f"""INSERT INTO edits (id, job_id, analysis_id, item_set_id, origin, edit_prompt, backend, model_id, params,
                               seed, output_uri, output_sha256, width, height, timings, candidate, created_at)
            SELECT e, {a} + e, i, i, 'pipeline', 'put on the garment, ' || i, {ensemble}[1 + x.k % {len(ENSEMBLE)}],
                   'bench/' || {ensemble}[1 + x.k % {len(ENSEMBLE)}], '{{}}', 1000 * i + x.k,
                   o.uri, o.sha256, o.width, o.height, '{{}}', x.k, now()
            FROM {edits} JOIN bench_outputs o ON o.k = e % (SELECT count(*) FROM bench_outputs)""",
        f"""INSERT INTO scores (edit_id, scorer, metrics, details, params, job_id, error_kind, error_code,
                                created_at, updated_at)
            SELECT e, s.scorer,
                   CASE WHEN s.scorer = 'identity' AND e % 97 = 0 THEN '{{}}'::json
                        WHEN s.scorer = 'change' THEN json_build_object(
                            'ssim', round((0.5 + 0.5 * random())::numeric, 4), 'mad', round((0.3 * random())::numeric, 4))
                        WHEN s.scorer = 'identity' THEN json_build_object(
                            'identity_distance', round((0.2 + 0.6 * random())::numeric, 4), 'faces_input', 1,
                            'faces_edited', CASE WHEN e % 53 = 0 THEN 0 ELSE 1 END)
                        WHEN s.scorer = 'clip' THEN json_build_object(
                            'clip_image', round((0.6 + 0.4 * random())::numeric, 4),
                            'clip_direction', round((0.1 + 0.4 * random())::numeric, 4),
                            'clip_text', round((0.15 + 0.2 * random())::numeric, 4))
                        WHEN s.scorer = 'dino' THEN json_build_object('dino_similarity', round((0.3 + 0.7 * random())::numeric, 4))
                        WHEN s.scorer = 'judge' THEN json_build_object('judge_overall', round((5 + 5 * random())::numeric, 1))
                        ELSE json_build_object('garment_max', round((0.2 + 0.6 * random())::numeric, 4)) END,
                   CASE WHEN s.scorer = 'judge' THEN '{{"verdict": "bench", "notes": "set-based"}}'::json END,
                   '{{}}', {a} + {n} + e,
                   CASE WHEN s.scorer = 'identity' AND e % 97 = 0 THEN 'input' END,
                   CASE WHEN s.scorer = 'identity' AND e % 97 = 0 THEN 'identity.no_face_input' END, {ts}
            FROM generate_series(1, {n}) e
            CROSS JOIN (VALUES {", ".join(f"('{s}')" for s in scorers)}) s(scorer)""",
        f"""INSERT INTO decisions (id, edit_id, decision, reasons, failed, thresholds, margin, decided_at)
            SELECT e, e, CASE WHEN e::bigint * 7919 % 5 < 2 THEN 'rejected' ELSE 'accepted' END,
                   CASE WHEN e::bigint * 7919 % 5 < 2 THEN '["identity_lost"]'::json ELSE '[]'::json END, '{{}}',
                   json_build_object('recipe', CASE WHEN i % 4 = 0 THEN 'enrich' ELSE 'tryon' END),
                   round(random()::numeric, 4), now()
            FROM {edits}""",
        # two reviewers on 2 % of the edits
        f"""INSERT INTO reviews (reviewer_id, edit_id, decision, tags, created_at)
            SELECT r.id, i, CASE WHEN random() < 0.3 THEN 'rejected' ELSE 'accepted' END, '[]', now()
            FROM generate_series(1, {n}) i CROSS JOIN (SELECT id FROM reviewers) r WHERE i % 50 = 1""",
        # a placeholder selection per set (candidate 0; selected properly by reselect_all next), and a
        # person's pick (candidate 1) on 1 % of the sets, which no selection step overwrites
        f"""INSERT INTO selections (analysis_id, item_set_id, edit_id, ranking, rule, why, candidates, expected,
                                    person_edit_id, person_reviewer_id, person_note, person_at, selected_at)
            SELECT i, i, {c} * (i - 1) + 1, '[]', 'bench', 'placeholder', {c}, {c},
                   CASE WHEN i % 100 = 5 THEN {c} * (i - 1) + 2 END,
                   CASE WHEN i % 100 = 5 THEN (SELECT min(id) FROM reviewers) END,
                   CASE WHEN i % 100 = 5 THEN 'bench: a person prefers candidate 1' END,
                   CASE WHEN i % 100 = 5 THEN now() END, now()
            FROM generate_series(1, {a}) i""",
        *(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))"
          for t in ("item_sets", "jobs", "analyses", "edits", "scores", "decisions", "reviews")),
    ]


def build_store(db: Any, n: int, photos: dict[str, list[tuple[int, str, str, int, int]]], queued: int,
                candidates: int = 1) -> str:
    """Fill the store (best-of-N sets of ``candidates`` edits when it is 2 or more: then the
    selections are placeholders, for :func:`select_every_set`); returns a script token of reviewer ``ann``."""
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
        statements = (build_sql(n, photos, queued) if candidates < 2
                      else build_sql_candidates(n, candidates, photos, queued))
        for stmt in statements:
            s.execute(text(stmt))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))  # statistics and visibility, as autovacuum keeps them
    return token


def select_every_set(db: Any, settings: Any, sets: int) -> dict[str, int]:
    """Select every set of a best-of-N store (its placeholder rows) as ``score --redecide`` does,
    in this process; the report of :func:`common.domain.selection.reselect_all`."""
    from sqlalchemy import func, select, text

    from common.domain.selection import reselect_all
    from common.store.rows import Selection

    report = reselect_all(db, settings).as_dict()
    with db.session() as s:
        left = s.scalar(select(func.count()).select_from(Selection).where(Selection.rule == "bench")) or 0
    if report["sets"] != sets or left:
        raise RuntimeError(f"reselect_all selected {report['sets']} of {sets} sets; {left} placeholders left")
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE selections"))
    return report


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
                 log: Callable[[str], None], candidates: int = 1) -> dict[str, float]:
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
        token = build_store(db, n, photos, queued=max(n // 50, 8 * claims + 8), candidates=candidates)
        r["build the store (SQL)"] = round(time.perf_counter() - t, 1)
        sets = n // candidates
        if candidates > 1:
            r["analysed sets"] = sets
            t = time.perf_counter()
            select_every_set(db, settings, sets)
            r["select every set (reselect_all, in-process)"] = round(time.perf_counter() - t, 2)
            log(f"{n} edits: {sets} sets selected in {r['select every set (reselect_all, in-process)']} s")
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
            if candidates > 1:
                r[SET_PAGE] = median_ms(get(f"/api/sets/{max(sets // 2, 1)}"), repeat)
        log(f"{n} edits: API done")

        env = clean_env(data_dir=data_dir)
        env["SYNTHPIPE_DATABASE_URL"] = url
        cli = [sys.executable, "-m", "common.cli"]
        wall, rss, report = timed_command([*cli, "score", "--redecide", "--json"], env, timeout)
        if report.get("decided") != n:
            raise RuntimeError(f"score --redecide decided {report.get('decided')} of {n} edits")
        r["score --redecide"], r["score --redecide peak RSS"] = wall, rss
        if candidates > 1:
            reselected = (report.get("reselected") or {}).get("sets")
            if reselected != sets:
                raise RuntimeError(f"score --redecide re-selected {reselected} of {sets} sets")
            r["score --redecide: sets re-selected"] = reselected
        log(f"{n} edits: redecide {wall} s, {rss} MiB ({json.dumps(report.get('reselected'))})")
        for layout, args in export_layouts(candidates).items():
            out = Path(tempfile.mkdtemp(prefix=f"export-{layout.replace(' ', '-')}-", dir=data_dir))
            shutil.rmtree(out)
            wall, rss, done = timed_command([*cli, "export", str(out), *args, "--json"], env, timeout)
            r[f"export {layout}"], r[f"export {layout} peak RSS"] = wall, rss
            if candidates > 1:
                r[f"export {layout} rows"] = int(done.get("rows") or 0)
            shutil.rmtree(out, ignore_errors=True)
            log(f"{n} edits: export {layout} {wall} s, {rss} MiB, {done.get('rows')} rows")
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


def markdown(results: dict[int, dict[str, float]], candidates: int = 1) -> str:
    sizes = sorted(results)
    lines = ["| operation | " + " | ".join(f"{n:,} edits" for n in sizes) + " | growth per 10× |",
             "|---|" + "---:|" * (len(sizes) + 1)]
    for name, unit in operations(candidates):
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
    p.add_argument("--candidates", type=int, default=1,
                   help="best-of-N stores: each size's edits as sets of this many candidates, with selections "
                        "(with --smoke: 300 edits); 1 (the default): plain edits")
    args = p.parse_args()
    if not 1 <= args.candidates <= 32:
        p.error(f"--candidates {args.candidates}: 1 to 32")
    sizes = ([500] if args.candidates < 2 else [100 * args.candidates]) if args.smoke else \
        [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.candidates > 1 and (bad := [n for n in sizes if n % args.candidates or n < 2 * args.candidates]):
        p.error(f"sizes count edits: each must be a multiple of --candidates {args.candidates} "
                f"(at least 2 sets): {bad}")
    if args.full and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    repeat = 1 if args.smoke else args.repeat
    from isolation import isolate

    data_dir = isolate("bench-scale-")  # own data dir, storage and settings; none of the caller's

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[int, dict[str, float]] = {}
    for n in sorted(sizes):
        results[n] = measure_size(n, args.pg_url, data_dir, repeat, args.keep, args.timeout, log, args.candidates)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        report: dict[str, Any] = {"benchmark": "scale", "machine": machine, "repeat": repeat,
                                  "units": dict(operations(args.candidates)),
                                  "operations": [name for name, _ in operations(args.candidates)],
                                  "results": {str(n): r for n, r in results.items()}}
        if args.candidates > 1:
            report["candidates"] = args.candidates
        print(json.dumps(report))
    else:
        best_of_n = f"; best-of-{args.candidates} sets (sizes count edits)" if args.candidates > 1 else ""
        print(f"{machine}; PostgreSQL; medians of {repeat}{best_of_n}\n")
        print(markdown(results, args.candidates))


if __name__ == "__main__":
    main()
