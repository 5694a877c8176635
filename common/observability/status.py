"""``synthpipe status``: jobs per stage and status, assets per role, tokens per stage and model."""

from __future__ import annotations

from typing import Any

from common.media.assets import asset_counts
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import STATUSES
from common.store.usage import totals


def status_report(db: Database) -> dict[str, Any]:
    """``{"jobs": {stage: {status: n}}, "assets": {role: n}, "tokens": [{stage, model, requests,
    prompt_tokens, completion_tokens}]}``, zeros included (tokens: the few ``model_usage`` rows)."""
    with db.session() as s:
        assets = asset_counts(s)
        tokens = totals(s)
    return {"jobs": jobstore.counts(db), "assets": assets, "tokens": tokens}


def status_text(report: dict[str, Any]) -> str:
    head = f"{'stage':<8}" + "".join(f"{st:>11}" for st in STATUSES)
    rows = [head]
    for stage, by in report["jobs"].items():
        rows.append(f"{stage:<8}" + "".join(f"{by.get(st, 0):>11}" for st in STATUSES))
    rows.append("assets: " + ", ".join(f"{role} {n}" for role, n in report["assets"].items()))
    for t in report.get("tokens", []):
        rows.append(f"tokens: {t['stage']} {t['model']}: {t['prompt_tokens']} prompt + {t['completion_tokens']} "
                    f"completion in {t['requests']} answers")
    return "\n".join(rows)
