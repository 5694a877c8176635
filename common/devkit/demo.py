"""``synthpipe demo``: the whole pipeline, offline, on tiny models and drawn sample photos."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from common.core import stages
from common.core.settings import get_settings, reset_settings
from common.dataset.export import export
from common.dataset.ingest import ingest
from common.devkit import samples
from common.devkit.tinymodels import build_all, settings_for
from common.domain.pairing import pair
from common.runtime.runner import StageContext, run_all
from common.store.db import get_database, reset_databases
from common.store.jobs import counts
from common.store.rows import Decision, Edit, Job
from common.store.storage import get_storage

log = logging.getLogger(__name__)


def run_demo(folder: Path, *, persons: int = 4, garments: int = 6, characters: int = 2) -> dict[str, Any]:
    """Build tiny models, draw photos, ingest → pair → run every stage → export."""

    started = time.perf_counter()
    folder = folder.resolve()
    models = build_all(folder / "models")
    data = folder / "data"
    env = {  # the demo always runs on the embedded defaults, whatever the environment or toml say
        "SYNTHPIPE_DATA_DIR": str(data),
        "SYNTHPIPE_DATABASE_URL": f"sqlite:///{data / 'synthpipe.db'}",
        "SYNTHPIPE_STORAGE_URL": (data / "objects").as_uri(),
        "SYNTHPIPE_BROKER_URL": "",
        **settings_for(models),
        # edits at least images.min_side (64) on their short side, so the score stage takes them
        "SYNTHPIPE_EDIT__MAX_SIDE": "96",
    }
    os.environ.update(env)
    reset_settings()
    reset_databases()
    settings = get_settings()
    db, storage = get_database(), get_storage()
    photos = samples.write_samples(folder / "photos", persons=persons, garments=garments,
                                   characters=characters, seed=2026)
    for role, sub in photos.items():
        report = ingest(sub, role, db=db, storage=storage, settings=settings)
        log.info("ingest %s: %s", role, report.as_dict())
    with db.session() as s:
        pair(s, settings, "tryon", limit=persons, seed=1)
        pair(s, settings, "enrich", seed=1)
    ctx = StageContext(settings=settings, db=db, storage=storage)
    run_all(ctx)
    out = folder / "dataset"
    # every edit, accepted or not: with random weights nearly all are rejected, and the rows say why
    exported = export(db, storage, out, decision="all", settings=settings)

    return {
        "seconds": time.perf_counter() - started, "jobs": counts(db), "rows": exported.rows,
        "decisions": exported.by_decision, "dataset": str(out), "contact_sheet": str(exported.contact_sheet),
        "settings": env, "notes": decision_notes(db),
    }


def decision_notes(db: Any) -> list[str]:
    """Lines that say how the demo's edits were decided and why nearly all are rejected."""
    from collections import Counter

    from sqlalchemy import func, select


    if "score" not in stages.names():
        return ["edits are not scored: the score stage is not installed; the dataset holds every edit"]
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Edit)) or 0
        decided = s.execute(select(Decision.decision, Decision.reasons)).all()
        failed = s.execute(select(Job.reason, func.count()).where(Job.stage == "score", Job.status.in_(
            ("failed", "dead"))).group_by(Job.reason)).all()
    accepted = sum(1 for d, _ in decided if d == "accepted")
    reasons = Counter(str(code) for d, codes in decided if d != "accepted" for code in (codes or []))
    lines = [f"scored {len(decided)} of {total} edits: {accepted} accepted, {len(decided) - accepted} rejected"]
    if reasons:
        lines.append("rejected for: " + ", ".join(f"{code} {n}" for code, n in reasons.most_common()))
    if failed:
        lines.append("score jobs failed: " + ", ".join(f"{code or 'unknown'} {n}" for code, n in sorted(
            failed, key=lambda kv: (-kv[1], str(kv[0])))) + " (`synthpipe jobs list --stage score --status failed` lists them)")
    lines += [
        "the demo's models have tiny random weights: its edits are noise-like and its CLIP, DINOv2 and judge",
        "scores are random, so nearly every edit fails a threshold; real checkpoints (settings *_model) give",
        "real scores. The dataset holds every edit with its decision column; `synthpipe export DIR` keeps the",
        "accepted ones, `--decision rejected` the preference negatives.",
    ]
    return lines
