"""``synthpipe export``: the run as a dataset, a summary and an offline contact sheet.

- ``imagefolder``: ``OUT_DIR/train/metadata.jsonl`` plus image files; ``datasets.load_dataset
  (OUT_DIR)`` reads it, with image columns ``input_image``, ``edited_image`` and
  ``garment_images`` (``*_file_name(s)`` keys).
- ``parquet``: ``OUT_DIR/data/train-XXXXX-of-YYYYY.parquet`` shards of at most ``shard_size``
  bytes, images embedded and the ``datasets`` features recorded; ``load_dataset("parquet",
  data_dir=OUT_DIR)`` reads them.
- ``webdataset``: ``OUT_DIR/data/train-000000.tar`` … shards, one sample per edit.

Rows stream: read in chunks by edit id (:mod:`common.dataset.export_rows`), written as they
come (:mod:`common.dataset.writers`), counted into the summary and the contact sheet as they
pass; memory does not grow with the number of rows.

One row per edit, pipeline-made or imported; ``edit_prompt`` is the text column diffusers'
InstructPix2Pix training script reads by default. ``decision`` chooses the rows: ``accepted``
(the default), ``rejected`` (the preference negatives) or ``all`` (never-scored edits too).
Best-of-N: of an analysis's candidate edits only the selected one counts as accepted; the others
that were accepted come with ``rejected`` and the reason ``selection.not_selected``
(:mod:`common.dataset.export_rows`).
Every row carries its decision, reason codes, one column per metric and the judge's verdict.
Nested records (analysis, keywords, parameters, verdict) are JSON strings so every row has the
same schema.

Export writes only into an empty folder or one it wrote before: it leaves a marker file
(``.synthpipe-export``) listing every file and folder it wrote, a re-export removes exactly
those, and anything else it would write over is refused, untouched (:mod:`common.dataset.outfolder`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from common.core.errors import InputError
from common.core.progress import bar
from common.core.settings import get_settings
from common.dataset.card import CARD, CardConfig, Tally, write_card
from common.dataset.export_rows import (
    DECISION_FILTERS,
    PASSED_OVER,
    SELECTED,
    final_decision_sql,
    iter_pairs,
    iter_rows,
    plan_rows,
    recipe_controls,
    selected_decision_sql,
    with_winners,
)
from common.dataset.layouts import LAYOUTS, LayoutPlan
from common.dataset.outfolder import claim_folder
from common.dataset.preference import PreferenceWriter, pair_row
from common.dataset.summary import summarise
from common.dataset.vl_sft import VlSftWriter
from common.dataset.writers import (
    DEFAULT_SHARD_SIZE,
    WRITERS,
    features_of,
    layout_paths,
    open_writer,
)
from common.domain.agreement import agreement_summary
from common.domain.decide import RULES
from common.media.contact_sheet import ContactSheet
from common.store.db import Database
from common.store.rows import Decision, Edit, ReviewEditCount
from common.store.storage import Storage

if TYPE_CHECKING:
    from common.core.settings import Settings

log = logging.getLogger(__name__)

PREFERENCE = "preference"
VL_SFT = "vl-sft"
FORMATS = (*WRITERS, *LAYOUTS, PREFERENCE, VL_SFT)
__all__ = ["DECISION_FILTERS", "FORMATS", "ExportReport", "export", "quiet_datasets", "thresholds_of"]


@dataclass
class ExportReport:
    out_dir: Path
    format: str
    decision: str
    rows: int
    filtered: int
    summary_path: Path
    contact_sheet: Path
    by_decision: dict[str, int]
    shards: int = 0  # parquet and webdataset: how many files the rows went into

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "format": self.format, "decision": self.decision,
                "rows": self.rows, "by_decision": self.by_decision, "filtered_out": self.filtered,
                "shards": self.shards, "summary": str(self.summary_path), "contact_sheet": str(self.contact_sheet)}


# --- the folder ----------------------------------------------------------------------------


def _nothing_to_export(db: Database, decision: str) -> InputError:
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Edit)) or 0
        by = dict(s.execute(select(Decision.decision, func.count()).group_by(Decision.decision)).all())
        passed_over = s.scalar(with_winners(
            select(func.count()).select_from(Edit).outerjoin(Decision, Decision.edit_id == Edit.id)
            .outerjoin(ReviewEditCount, ReviewEditCount.edit_id == Edit.id))
            .where(final_decision_sql() == "accepted", selected_decision_sql() == "rejected")) or 0
    unscored = total - sum(by.values())
    counts = ", ".join(f"{k} {by.get(k, 0)}" for k in ("accepted", "rejected")) + f", not scored {unscored}"
    hint = "" if decision == "all" else "; --decision all exports every edit, scored or not"
    if passed_over and decision == "accepted":
        hint += (f"; {passed_over} accepted candidates were not selected (best-of-N): --decision rejected exports "
                 "them, or a person can select one on the review page")
    return InputError(f"no edits to export with --decision {decision} ({total} edits: {counts}){hint}",
                      code="export.empty")


def export(db: Database, storage: Storage, out_dir: Path, *, fmt: str = "imagefolder", decision: str = "accepted",
           min_confidence: float | None = None, settings: Settings | None = None,
           shard_size: int = DEFAULT_SHARD_SIZE, recipe: str | None = None) -> ExportReport:
    """Write the chosen edits as a dataset, ``summary.json`` and ``contact_sheet.html`` in ``out_dir``.

    Raises ``InputError`` (nothing written) when no edit matches, or when ``out_dir`` holds
    something an export did not write where this one would write.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    pairs = fmt == PREFERENCE  # pairs of a finally accepted and a finally rejected edit: --decision is moot
    plan = plan_rows(db, decision="all" if pairs else decision, min_confidence=min_confidence, recipe=recipe)
    total = (sum(1 for _ in iter_pairs(db, {}, min_confidence=min_confidence, ids_only=True, recipe=recipe))
             if pairs else plan.rows)
    if not total:
        if pairs:
            raise InputError("no preference pairs to export: no input and instruction has both a finally accepted "
                             "and a finally rejected edit", code="export.empty")
        raise _nothing_to_export(db, decision) if not plan.filtered else InputError(
            f"no edits to export: all {plan.filtered} with --decision {decision} are below --min-confidence",
            code="export.empty")
    if settings is None:
        settings = get_settings()
    layout = LayoutPlan(out_dir.resolve(), recipe_controls(db, decision=decision, min_confidence=min_confidence,
                                                           recipe=recipe))
    files, folders = (LAYOUTS[fmt].paths(layout) if fmt in LAYOUTS else VlSftWriter.paths(layout) if fmt == VL_SFT
                      else layout_paths("parquet") if pairs else layout_paths(fmt))
    owned = claim_folder(out_dir, [*files, "summary.json", "contact_sheet.html", CARD], folders=folders,
                         format=fmt, decision="pairs" if pairs else decision)
    sheet = ContactSheet(plan.metrics, plan.ranges, thresholds_of(db, plan.columns))
    by_decision: Counter[str] = Counter()
    by_selection: Counter[str] = Counter()  # rows (pairs: both sides) selected / not selected by best-of-N
    by_pairing: Counter[str] = Counter()  # pairs by how they were made (preference)
    tally = Tally()
    writer = (LAYOUTS[fmt](storage, owned, layout) if fmt in LAYOUTS
              else PreferenceWriter(storage, owned, plan.metrics, shard_size=shard_size) if pairs
              else VlSftWriter(storage, owned, plan.metrics, shard_size=shard_size, plan=layout) if fmt == VL_SFT
              else open_writer(fmt, storage, owned, plan.metrics, shard_size))
    source: Iterator[tuple[dict[str, Any], tuple[dict[str, Any], ...]]] = (
        ((pair_row(c, r, plan.metrics), (c, r)) for c, r in iter_pairs(db, plan.columns, min_confidence=min_confidence,
                                                                        recipe=recipe))
        if pairs else ((row, (row,)) for row in iter_rows(db, plan.columns, decision=decision,
                                                          min_confidence=min_confidence, recipe=recipe)))
    try:
        with bar(desc=f"export {fmt}", total=total, unit="row") as progress:
            for row, edits in source:
                writer.write(row)
                for edit in edits:  # a pair shows both its edits (an edit in several pairs, each time)
                    sheet.add(edit)
                tally.add({**row, "decision": "pair"} if pairs else row)
                by_decision["pairs" if pairs else (row["decision"] or "unscored")] += 1
                by_selection.update(e["selection"] for e in edits if e["selection"])
                if pairs:
                    by_pairing[row["pairing"]] += 1
                progress.update()
    except BaseException:
        writer.abort()  # what was written stays journalled: the next export removes it
        raise
    writer.close()
    rows = sum(by_decision.values())
    summary = summarise(db, exported=rows, filtered=plan.filtered)
    summary["export"] = {"decision": decision, "format": fmt, "rows": rows, "by_decision": dict(by_decision),
                         "selection": {"selected": by_selection[SELECTED], "not_selected": by_selection[PASSED_OVER]}}
    if pairs:
        summary["export"]["by_pairing"] = dict(by_pairing)
    with db.session() as s:
        summary["review"] = agreement_summary(s)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    contact = sheet.write(storage, out_dir / "contact_sheet.html", summary, limits=settings.images)
    selection = ("every input and instruction with a finally accepted and a finally rejected edit, every such "
                 "pair; where an analysis had N candidate edits and one was selected, the selected edit with each "
                 "other candidate" if pairs else f"--decision {decision}") + (
        f", --min-confidence {min_confidence:g}" if min_confidence else "") + (f", --recipe {recipe}" if recipe else "")
    write_card(out_dir / CARD, layout=fmt, selection=selection, tally=tally, rows=rows,
               configs=_card_configs(fmt, writer, plan.metrics, rows), notes=_best_of_n_notes(pairs, by_selection))
    owned.finish()
    log.info("exported %d rows (%s; %d filtered out) to %s as %s", rows, decision, plan.filtered, out_dir, fmt)
    return ExportReport(out_dir, fmt, decision, rows, plan.filtered, summary_path, contact, dict(by_decision),
                        getattr(writer, "shards", 0))


def _best_of_n_notes(pairs: bool, by_selection: Counter[str]) -> list[str]:
    """The card's word on best-of-N, where any exported edit was one of several candidates."""
    if not by_selection:
        return []
    counts = f"{by_selection[SELECTED]} selected, {by_selection[PASSED_OVER]} not selected"
    if pairs:
        return [f"Best-of-N ({counts}, chosen and rejected sides counted): where an analysis made N candidate "
                "edits, the selected one (a reviewer's overrule over the selection step's pick) is `chosen` "
                "against each other decided candidate of it (`pairing` = `selection`); other edits pair each "
                "accepted with each rejected edit of the same input and instruction (`pairing` = `decision`)."]
    return [f"Best-of-N ({counts}): where an analysis made N candidate edits, only the selected one (a "
            "reviewer's overrule over the selection step's pick) counts as accepted; an accepted candidate that "
            "was not selected is `rejected` with the reason `selection.not_selected`. The columns `candidate`, "
            "`selection`, `selection_rank`, `selection_by`, `selection_why` and `selection_note` say which."]


def _card_configs(fmt: str, writer: Any, metrics: list[str], rows: int) -> list[CardConfig]:
    """The card's configs: each layout's data files, with the features ``datasets`` loads them as."""
    if fmt in LAYOUTS or fmt in (PREFERENCE, VL_SFT):
        return list(writer.card_configs())
    if fmt == "imagefolder":
        return [CardConfig("default", "train/**", rows, features_of(metrics), inferred=True)]
    if fmt == "parquet":
        return [CardConfig("default", "data/train-*.parquet", rows, features_of(metrics), inferred=True)]
    return [CardConfig("default", "data/train-*.tar", rows, inferred=True)]  # webdataset: datasets names its columns by extension


def thresholds_of(db: Database, columns: dict[tuple[str, str], str]) -> dict[str, list[tuple[str, float]]]:
    """``column -> [(label, value)]``: the limits the decisions were made against, read from what
    each recipe's latest decision recorded (so the histograms show the thresholds actually used)."""

    latest: dict[str, dict[str, Any]] = {}
    with db.session() as s:
        for (thresholds,) in s.execute(select(Decision.thresholds).order_by(Decision.decided_at.desc()).limit(2000)):
            if isinstance(thresholds, dict):
                latest.setdefault(str(thresholds.get("recipe", "")), thresholds)
    lines: dict[str, dict[tuple[str, float], list[str]]] = {}
    for recipe, thresholds in sorted(latest.items()):
        for rule in RULES:
            value, column = thresholds.get(rule.key), columns.get((rule.scorer, rule.metric))
            if column is not None and isinstance(value, int | float) and not isinstance(value, bool):
                lines.setdefault(column, {}).setdefault((rule.bound, float(value)), []).append(recipe)
    return {column: [(f"{bound} {value:g}" + (f" ({', '.join(r for r in recipes if r)})" if len(by) > 1 else ""),
                      value) for (bound, value), recipes in sorted(by.items())]
            for column, by in lines.items()}



# --- writers -------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets`` without its progress bars and log lines (they would bury a command's one-line
    output; what goes wrong is raised, and said once, by the caller)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was:
            datasets.enable_progress_bars()
