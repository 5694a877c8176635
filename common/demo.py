"""``synthpipe demo``: the whole pipeline, offline, on tiny models and drawn sample photos."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_demo(folder: Path, *, persons: int = 4, garments: int = 6, characters: int = 2) -> dict[str, Any]:
    """Build tiny models, draw photos, ingest → pair → run every stage → export."""
    from common import samples
    from common.db import get_database, reset_databases
    from common.export import export
    from common.ingest import ingest
    from common.pairing import pair
    from common.runner import StageContext, run_all
    from common.settings import get_settings, reset_settings
    from common.storage import get_storage
    from common.tinymodels import build_all, settings_for

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
    exported = export(db, storage, out)
    from common.jobs import counts

    return {
        "seconds": time.perf_counter() - started, "jobs": counts(db), "rows": exported.rows,
        "dataset": str(out), "contact_sheet": str(exported.contact_sheet), "settings": env,
    }
