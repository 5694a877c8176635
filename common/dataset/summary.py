"""A run's summary: counts per stage and outcome, acceptance per recipe, site and category,
decisions with their rejection reason codes per recipe, site and category, failures by reason code,
what the crawls did with the images they found (refusals and skips by reason code), and best-of-N's
selections (sets, candidates selected and not, sets a person overruled).
Every figure is counted by the database (``GROUP BY``), except the crawl counts, summed over the
scrape jobs' reports read one at a time: memory does not grow with the store."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, case, cast, func, select

from common.domain.selection import effective_selection
from common.store import jobs as jobstore
from common.store.db import Database
from common.store.rows import Asset, Decision, Edit, ItemSet, ItemSetAsset, Job, Selection

LOCAL = "(local files)"


def summarise(db: Database, *, exported: int | None = None, filtered: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": jobstore.counts(db)}
    with db.session() as s:
        # the primary photo (position 0) decides a set's site and category
        primary = (
            select(ItemSet.id, ItemSet.recipe, Asset.site, Asset.category)
            .join(ItemSetAsset, (ItemSetAsset.item_set_id == ItemSet.id) & (ItemSetAsset.position == 0))
            .join(Asset, Asset.id == ItemSetAsset.asset_id)
        ).subquery()
        vl = s.execute(
            select(primary.c.recipe, primary.c.site, primary.c.category, Job.status, func.count())
            .join(Job, (Job.item_set_id == primary.c.id) & (Job.stage == "vl"))
            .group_by(primary.c.recipe, primary.c.site, primary.c.category, Job.status)
        ).all()
        edits = s.execute(
            select(primary.c.recipe, primary.c.site, primary.c.category, func.count())
            .join(Edit, Edit.item_set_id == primary.c.id)
            .group_by(primary.c.recipe, primary.c.site, primary.c.category)
        ).all()
        # grouped in the database (reason lists as their JSON text): a few rows, however many edits
        reasons_text = cast(Decision.reasons, String)
        decided = [
            (recipe, site, category, decision, json.loads(reasons) if reasons else [], n)
            for recipe, site, category, decision, reasons, n in s.execute(
                select(primary.c.recipe, primary.c.site, primary.c.category, Decision.decision, reasons_text,
                       func.count())
                .select_from(Edit)
                .join(primary, Edit.item_set_id == primary.c.id)
                .outerjoin(Decision, Decision.edit_id == Edit.id)
                .group_by(primary.c.recipe, primary.c.site, primary.c.category, Decision.decision, reasons_text))
        ]
        failed = s.execute(
            select(Job.stage, Job.status, Job.error_type, Job.reason, func.count(), func.min(Job.id))
            .where(Job.status.in_(("failed", "dead")))
            .group_by(Job.stage, Job.status, Job.error_type, Job.reason)
        ).all()
        messages = dict(s.execute(select(Job.id, Job.error_message).where(Job.id.in_([f[5] for f in failed]))).all())
        out["selection"] = _selections(s)
        out["crawl"] = _crawl(s)
    out["acceptance"] = {
        "by_recipe": _acceptance(vl, edits, lambda r: r[0]),
        "by_site": _acceptance(vl, edits, lambda r: r[1] or LOCAL),
        "by_category": _acceptance(vl, edits, lambda r: r[2] or LOCAL),
    }
    out["decisions"] = {
        "by_recipe": _decisions(decided, lambda r: r[0]),
        "by_site": _decisions(decided, lambda r: r[1] or LOCAL),
        "by_category": _decisions(decided, lambda r: r[2] or LOCAL),
    }
    reasons: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], str] = {}
    for stage, status, etype, code, n, first in sorted(failed, key=lambda f: f[5]):  # the first failure's message
        group = (stage, etype or status, code or "unknown")
        reasons[group] += n
        examples.setdefault(group, _first_line(messages.get(first)))
    out["failures"] = [
        {"stage": stage, "error_type": etype, "reason": code, "count": n, "example": examples[(stage, etype, code)]}
        for (stage, etype, code), n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    if exported is not None:
        out["exported_rows"] = exported
    if filtered is not None:
        out["filtered_out"] = filtered
    return out


CRAWL_COUNTS = ("images_by_status", "rejections", "images_skipped", "images_blocked", "roles_by")


def _crawl(s: Any) -> dict[str, Any]:
    """What the crawls of this store did with the images they found, summed over the scrape jobs'
    reports: images by outcome, refusals by the loader's reason code, images left behind by code
    (furniture, smaller versions), never requested (off-site), roles by how they were decided, and
    page and image failures by code. Reports are read one job at a time."""
    out: dict[str, Counter[str]] = {key: Counter() for key in (*CRAWL_COUNTS, "failures_by_code")}
    crawls = 0
    query = (select(Job.result).where(Job.stage == "scrape", Job.status == "succeeded")
             .execution_options(yield_per=50))
    for (result,) in s.execute(query):
        report = (result or {}).get("report") if isinstance(result, dict) else None
        if not isinstance(report, dict):
            continue
        crawls += 1
        for key in CRAWL_COUNTS:
            out[key].update({k: int(v) for k, v in (report.get(key) or {}).items()})
        for failure in (report.get("pages_failed") or []) + (report.get("images_failed") or []):
            out["failures_by_code"][str(failure.get("code"))] += 1
    return {"crawls": crawls, **{key: dict(sorted(counts.items())) for key, counts in out.items()}}


def _selections(s: Any) -> dict[str, int]:
    """Best-of-N over the store: analyses with a selection, those a person overruled, their candidate
    edits, and of those how many are the effective winner (a person's pick, else the step's) or not."""
    sets, overruled = s.execute(select(func.count(), func.count(Selection.person_edit_id))).one()
    winners = effective_selection().subquery()
    candidates, selected = s.execute(
        select(func.count(), func.coalesce(func.sum(case((winners.c.edit_id == Edit.id, 1), else_=0)), 0))
        .select_from(Edit).join(winners, winners.c.analysis_id == Edit.analysis_id)
        .where(Edit.candidate.is_not(None))).one()
    return {"sets": int(sets), "overruled": int(overruled), "candidates": int(candidates),
            "selected": int(selected), "not_selected": int(candidates) - int(selected)}


def _acceptance(vl: Sequence[Any], edits: Sequence[Any], key: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"analysed": 0, "skipped": 0, "failed": 0,
                                                            "pending": 0, "edited": 0})
    for row in vl:
        g = groups[key(row)]
        status, n = row[3], row[4]
        if status == "succeeded":
            g["analysed"] += n
        elif status == "skipped":
            g["analysed"] += n
            g["skipped"] += n
        elif status in ("failed", "dead"):
            g["failed"] += n
        else:
            g["pending"] += n
    for row in edits:
        groups[key(row)]["edited"] += row[3]
    for g in groups.values():
        total = g["analysed"] + g["failed"] + g["pending"]
        g["sets"] = total
        g["acceptance"] = round(g["edited"] / total, 4) if total else 0.0
    return dict(sorted(groups.items()))


def _decisions(rows: Sequence[Any], key: Any) -> dict[str, dict[str, Any]]:
    """Per group: accepted, rejected and unscored edits, and rejections counted by reason code
    (an edit rejected for two reasons counts once under each); ``rows`` are counted groups
    (recipe, site, category, decision, reasons, count)."""
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"accepted": 0, "rejected": 0, "unscored": 0,
                                                            "reasons": Counter()})
    for row in rows:
        g = groups[key(row)]
        decision, codes, n = row[3], row[4], row[5]
        if decision is None:
            g["unscored"] += n
            continue
        g["accepted" if decision == "accepted" else "rejected"] += n
        if decision != "accepted":
            for code in codes or []:
                g["reasons"][str(code)] += n
    for g in groups.values():
        g["reasons"] = dict(sorted(g["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    return dict(sorted(groups.items()))


def _first_line(message: str | None) -> str:
    return (message or "").strip().splitlines()[0][:160] if message and message.strip() else ""
