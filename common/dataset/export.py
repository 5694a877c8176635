"""``synthpipe export``: the run as a dataset, a summary and an offline contact sheet.

- ``imagefolder``: ``OUT_DIR/train/metadata.jsonl`` plus image files; ``datasets.load_dataset
  (OUT_DIR)`` reads it, with image columns ``input_image``, ``edited_image`` and
  ``garment_images`` (``*_file_name(s)`` keys).
- ``parquet``: ``OUT_DIR/data/train-00000-of-00001.parquet`` with images embedded and the
  ``datasets`` features recorded; ``load_dataset("parquet", data_dir=OUT_DIR)`` reads it.

One row per edit, pipeline-made or imported; ``edit_prompt`` is the text column diffusers'
InstructPix2Pix training script reads by default. ``decision`` chooses the rows: ``accepted``
(the default), ``rejected`` (the preference negatives) or ``all`` (never-scored edits too).
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
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import func, select

from common.core.errors import InputError
from common.core.settings import get_settings
from common.dataset.outfolder import claim_folder
from common.dataset.summary import summarise
from common.domain.agreement import agreement_summary
from common.domain.decide import RULES
from common.domain.final_decision import FinalDecision, final_decisions
from common.media.contact_sheet import write_contact_sheet
from common.store.db import Database
from common.store.rows import Analysis, Decision, Edit, ItemSet, Job, Score
from common.store.storage import Storage

if TYPE_CHECKING:
    from common.core.settings import Settings

log = logging.getLogger(__name__)

FORMATS = ("imagefolder", "parquet")
DECISION_FILTERS = ("accepted", "rejected", "all")
PARQUET_FILE = "data/train-00000-of-00001.parquet"
UNSCORED = ""  # the decision column of an edit never scored (exported with --decision all only)
JUDGE = "judge"


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

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "format": self.format, "decision": self.decision,
                "rows": self.rows, "by_decision": self.by_decision, "filtered_out": self.filtered,
                "summary": str(self.summary_path), "contact_sheet": str(self.contact_sheet)}


class Collected(NamedTuple):
    rows: list[dict[str, Any]]  # one record per chosen edit, with URIs for its images
    filtered: int  # how many the confidence filter dropped
    columns: dict[tuple[str, str], str]  # (scorer, metric) -> its column name

    @property
    def metrics(self) -> list[str]:
        return list(self.columns.values())


def collect_rows(db: Database, *, decision: str = "accepted", min_confidence: float | None = None) -> Collected:
    """The chosen edits as records (see :class:`Collected`)."""
    if decision not in DECISION_FILTERS:
        raise InputError(f"unknown decision {decision!r} (allowed: {', '.join(DECISION_FILTERS)})")
    rows: list[dict[str, Any]] = []
    filtered = 0
    with db.session() as s:
        q = (
            select(Edit, ItemSet, Analysis, Job, Decision)
            .join(ItemSet, Edit.item_set_id == ItemSet.id)
            .outerjoin(Analysis, Edit.analysis_id == Analysis.id)
            .outerjoin(Job, Analysis.job_id == Job.id)
            .outerjoin(Decision, Decision.edit_id == Edit.id)
            .order_by(Edit.id)
        )
        finals = final_decisions(s)  # people's majority where reviewed, the AI's otherwise
        chosen = []
        for edit, item, analysis, vl_job, dec in s.execute(q):
            final = finals.get(edit.id)
            if decision != "all" and (final.decision if final else None) != decision:
                continue
            if min_confidence is not None and (analysis is None or analysis.confidence < min_confidence):
                filtered += 1
                continue
            chosen.append((edit, item, analysis, vl_job, dec))
        scores = _scores(s, [c[0].id for c in chosen])
        for edit, item, analysis, vl_job, dec in chosen:
            rows.append(_row(edit, item, analysis, vl_job, dec, scores.get(edit.id, [])))
            rows[-1].update(_review_columns(finals.get(edit.id), dec))
    return Collected(rows, filtered, _flatten_metrics(rows))


def _review_columns(final: FinalDecision | None, dec: Decision | None) -> dict[str, Any]:
    """``decision`` becomes the final one (people's majority where reviewed, else the AI's; a tie is
    "unresolved"); ``ai_decision`` keeps the AI's, ``review_*`` and ``reviewers`` the people's."""
    ai = dec.decision if dec else UNSCORED
    if final is None:  # an edit that arrived after the final decisions were read
        return {"ai_decision": ai, "review_decision": "", "review_tags": [], "reviewers": []}
    tie = final.source == "tie"
    return {"decision": final.decision or ("unresolved" if tie else UNSCORED), "ai_decision": ai,
            "review_decision": final.review_decision or ("tie" if tie else ""),
            "review_tags": list(final.review_tags), "reviewers": list(final.reviewers)}


def _scores(s: Any, edit_ids: list[int]) -> dict[int, list[Score]]:
    out: dict[int, list[Score]] = {}
    for start in range(0, len(edit_ids), 500):
        chunk = edit_ids[start:start + 500]
        for score in s.scalars(select(Score).where(Score.edit_id.in_(chunk)).order_by(Score.scorer)):
            out.setdefault(score.edit_id, []).append(score)
    return out


def _row(edit: Edit, item: ItemSet, analysis: Analysis | None, vl_job: Job | None, dec: Decision | None,
         scores: list[Score]) -> dict[str, Any]:
    members = [m.asset for m in item.members]
    primary = members[0]
    garments = [m.asset for m in item.members if m.role == "garment"]
    judge = next((sc for sc in scores if sc.scorer == JUDGE), None)
    return {
        "input_uri": primary.uri, "edited_uri": edit.output_uri, "garment_uris": [g.uri for g in garments],
        "edit_id": edit.id,
        "origin": edit.origin,
        "edit_prompt": edit.edit_prompt or (analysis.edit_prompt if analysis else ""),
        "decision": dec.decision if dec else UNSCORED,
        "reasons": [str(r) for r in (dec.reasons if dec else [])],
        "failed_checks": json.dumps(dec.failed if dec else {}, sort_keys=True),
        "judge": _judge_json(judge),
        "scores": json.dumps({sc.scorer: {"metrics": sc.metrics, "error_code": sc.error_code}
                              for sc in scores}, sort_keys=True),
        "_metrics": {(sc.scorer, k): v for sc in scores for k, v in (sc.metrics or {}).items()},
        "negative_prompt": (analysis.negative_prompt or "") if analysis else "",
        "recipe": item.recipe,
        "confidence": float(analysis.confidence) if analysis else None,
        "feasibility": analysis.feasibility if analysis else "",
        "analysis": json.dumps(analysis.data if analysis else {}, sort_keys=True),
        "keywords": json.dumps(item.keywords or {}, sort_keys=True),
        "variation": json.dumps(item.variation or {}, sort_keys=True),
        "provenance": json.dumps(edit.provenance or {}, sort_keys=True),
        "source_urls": [a.source_url or "" for a in members],
        "page_urls": [a.page_url or "" for a in members],
        "source_paths": [a.source_path or "" for a in members],
        "sites": [a.site or "" for a in members],
        "categories": [a.category or "" for a in members],
        "licences": [a.licence or "" for a in members],
        "found_via": [a.found_via or "" for a in members],
        "input_sha256": primary.sha256,
        "edited_sha256": edit.output_sha256,
        "vl_backend": analysis.backend if analysis else "", "vl_model": analysis.model_id if analysis else "",
        "vl_params": json.dumps(analysis.params if analysis else {}, sort_keys=True),
        "prompt_version": analysis.prompt_version if analysis else "",
        "schema_version": analysis.schema_version if analysis else "",
        "edit_backend": edit.backend, "edit_model": edit.model_id,
        "edit_params": json.dumps(edit.params, sort_keys=True),
        "seed": int(edit.seed),
        "item_set_key": item.key, "vl_job_key": vl_job.key if vl_job else "",
    }


def _judge_json(judge: Score | None) -> str:
    """The judge's verdict (its ``details``), or its recorded failure; "" where no judge ran."""
    if judge is None:
        return ""
    if judge.error_code:
        return json.dumps({"error": {"code": judge.error_code, "message": judge.error_message or ""}},
                          sort_keys=True)
    return json.dumps(judge.details or {}, sort_keys=True)


def metric_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Column name of each (scorer, metric): the metric's own name, or ``<scorer>_<metric>`` where
    two scorers share a name or it would shadow another column."""
    pairs = sorted({p for r in rows for p in r["_metrics"]})
    taken = set(rows[0]) if rows else set()
    named = Counter(m for _, m in pairs)
    return {(sc, m): (m if named[m] == 1 and m not in taken else f"{sc}_{m}") for sc, m in pairs}


def _flatten_metrics(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    columns = metric_columns(rows)
    for row in rows:
        values = row.pop("_metrics")
        for pair, name in columns.items():
            row[name] = _number(values.get(pair))
    return columns


def _number(value: Any) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    return None


# --- the folder ----------------------------------------------------------------------------


def _nothing_to_export(db: Database, decision: str) -> InputError:
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Edit)) or 0
        by = dict(s.execute(select(Decision.decision, func.count()).group_by(Decision.decision)).all())
    unscored = total - sum(by.values())
    counts = ", ".join(f"{k} {by.get(k, 0)}" for k in ("accepted", "rejected")) + f", not scored {unscored}"
    hint = "" if decision == "all" else "; --decision all exports every edit, scored or not"
    return InputError(f"no edits to export with --decision {decision} ({total} edits: {counts}){hint}",
                      code="export.empty")


def export(db: Database, storage: Storage, out_dir: Path, *, fmt: str = "imagefolder", decision: str = "accepted",
           min_confidence: float | None = None, settings: Settings | None = None) -> ExportReport:
    """Write the chosen edits as a dataset, ``summary.json`` and ``contact_sheet.html`` in ``out_dir``.

    Raises ``InputError`` (nothing written) when no edit matches, or when ``out_dir`` holds
    something an export did not write where this one would write.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    rows, filtered, columns = collect_rows(db, decision=decision, min_confidence=min_confidence)
    if not rows:
        raise _nothing_to_export(db, decision) if not filtered else InputError(
            f"no edits to export: all {filtered} with --decision {decision} are below --min-confidence",
            code="export.empty")
    data_files = _imagefolder_files(rows) if fmt == "imagefolder" else [PARQUET_FILE]
    owned = claim_folder(out_dir, [*data_files, "summary.json", "contact_sheet.html"], format=fmt, decision=decision)
    if fmt == "imagefolder":
        _write_imagefolder(storage, out_dir, rows)
    else:
        _write_parquet(storage, out_dir, rows)
    by_decision = dict(Counter(r["decision"] or "unscored" for r in rows))
    summary = summarise(db, exported=len(rows), filtered=filtered)
    summary["export"] = {"decision": decision, "format": fmt, "rows": len(rows), "by_decision": by_decision}
    with db.session() as s:
        summary["review"] = agreement_summary(s)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if settings is None:
        settings = get_settings()
    sheet = write_contact_sheet(storage, out_dir / "contact_sheet.html", rows, summary, limits=settings.images,
                                metrics=list(columns.values()), thresholds=thresholds_of(db, columns))
    owned.finish()
    log.info("exported %d rows (%s; %d filtered out) to %s as %s", len(rows), decision, filtered, out_dir, fmt)
    return ExportReport(out_dir, fmt, decision, len(rows), filtered, summary_path, sheet, by_decision)


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


def _image_name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]  # content-addressed: the name is the hash


def _imagefolder_files(rows: list[dict[str, Any]]) -> list[str]:
    """Every file :func:`_write_imagefolder` writes for ``rows``, relative to the export folder."""
    uris = {u for row in rows for u in (row["input_uri"], row["edited_uri"], *row["garment_uris"])}
    return ["train/metadata.jsonl", *sorted(f"train/images/{_image_name(u)}" for u in uris)]


def _copy(storage: Storage, uri: str, folder: Path) -> str:
    name = _image_name(uri)
    target = folder / name
    if not target.exists():
        target.write_bytes(storage.get(uri))
    return f"images/{name}"


def _write_imagefolder(storage: Storage, out_dir: Path, rows: list[dict[str, Any]]) -> None:
    train = out_dir / "train"
    images = train / "images"
    images.mkdir(parents=True, exist_ok=True)
    with (train / "metadata.jsonl").open("w") as fh:
        for row in rows:
            record = {k: v for k, v in row.items() if not k.endswith(("_uri", "_uris"))}
            record["input_image_file_name"] = _copy(storage, row["input_uri"], images)
            record["edited_image_file_name"] = _copy(storage, row["edited_uri"], images)
            record["garment_images_file_names"] = [_copy(storage, u, images) for u in row["garment_uris"]]
            fh.write(json.dumps(record) + "\n")


def _write_parquet(storage: Storage, out_dir: Path, rows: list[dict[str, Any]]) -> None:
    from datasets import Dataset, Features, Image, List, Value

    records = []
    for row in rows:
        record = {k: v for k, v in row.items() if not k.endswith(("_uri", "_uris"))}
        record["input_image"] = {"bytes": storage.get(row["input_uri"]), "path": None}
        record["edited_image"] = {"bytes": storage.get(row["edited_uri"]), "path": None}
        record["garment_images"] = [{"bytes": storage.get(u), "path": None} for u in row["garment_uris"]]
        records.append(record)
    text = Value("string")
    number = Value("float64")
    features = {
        "input_image": Image(), "edit_prompt": text, "edited_image": Image(), "garment_images": List(Image()),
        "edit_id": Value("int64"), "origin": text, "decision": text, "reasons": List(text),
        "ai_decision": text, "review_decision": text, "review_tags": List(text), "reviewers": List(text),
        "failed_checks": text, "judge": text, "scores": text,
        "negative_prompt": text, "recipe": text, "confidence": number, "feasibility": text,
        "analysis": text, "keywords": text, "variation": text, "provenance": text,
        "source_urls": List(text), "page_urls": List(text), "source_paths": List(text), "sites": List(text),
        "categories": List(text), "licences": List(text), "found_via": List(text), "input_sha256": text,
        "edited_sha256": text,
        "vl_backend": text, "vl_model": text, "vl_params": text, "prompt_version": text,
        "schema_version": text, "edit_backend": text, "edit_model": text, "edit_params": text,
        "seed": Value("int64"), "item_set_key": text, "vl_job_key": text,
    }
    for name in records[0]:
        features.setdefault(name, number)  # the metric columns
    target = out_dir / PARQUET_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with quiet_datasets():
        Dataset.from_list(records, features=Features(features)).to_parquet(str(target))
