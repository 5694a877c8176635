"""``synthpipe status``: jobs per stage and status, assets per role."""

from __future__ import annotations

from typing import Any

from common.media.assets import asset_counts
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import STATUSES


def status_report(db: Database) -> dict[str, Any]:
    """``{"jobs": {stage: {status: n}}, "assets": {role: n}}``, zeros included."""
    with db.session() as s:
        assets = asset_counts(s)
    return {"jobs": jobstore.counts(db), "assets": assets}


def status_text(report: dict[str, Any]) -> str:
    head = f"{'stage':<8}" + "".join(f"{st:>11}" for st in STATUSES)
    rows = [head]
    for stage, by in report["jobs"].items():
        rows.append(f"{stage:<8}" + "".join(f"{by.get(st, 0):>11}" for st in STATUSES))
    rows.append("assets: " + ", ".join(f"{role} {n}" for role, n in report["assets"].items()))
    return "\n".join(rows)
