"""``synthpipe export``: the run as a dataset, a summary and an offline contact sheet.

- ``imagefolder``: ``OUT_DIR/train/metadata.jsonl`` plus image files; ``datasets.load_dataset
  (OUT_DIR)`` reads it, with image columns ``input_image``, ``edited_image`` and
  ``garment_images`` (``*_file_name(s)`` keys).
- ``parquet``: ``OUT_DIR/data/train-00000-of-00001.parquet`` with images embedded and the
  ``datasets`` features recorded; ``load_dataset("parquet", data_dir=OUT_DIR)`` reads it.

One row per edit; ``edit_prompt`` is the text column diffusers' InstructPix2Pix training
script reads by default. Nested records (analysis, keywords, parameters) are JSON strings so
every row has the same schema.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.contact_sheet import write_contact_sheet
from common.db import Database
from common.models import Analysis, Edit, ItemSet, Job
from common.storage import Storage
from common.summary import summarise

log = logging.getLogger(__name__)

FORMATS = ("imagefolder", "parquet")


@dataclass
class ExportReport:
    out_dir: Path
    format: str
    rows: int
    filtered: int
    summary_path: Path
    contact_sheet: Path

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "format": self.format, "rows": self.rows,
                "filtered_out": self.filtered, "summary": str(self.summary_path),
                "contact_sheet": str(self.contact_sheet)}


def collect_rows(db: Database, *, min_confidence: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """One record per edit, with URIs for its images; and how many the filter dropped."""
    rows: list[dict[str, Any]] = []
    filtered = 0
    with db.session() as s:
        q = (
            select(Edit, Analysis, ItemSet, Job)
            .join(Analysis, Edit.analysis_id == Analysis.id)
            .join(ItemSet, Edit.item_set_id == ItemSet.id)
            .join(Job, Analysis.job_id == Job.id)
            .order_by(Edit.id)
        )
        for edit, analysis, item, vl_job in s.execute(q):
            if min_confidence is not None and analysis.confidence < min_confidence:
                filtered += 1
                continue
            members = [m.asset for m in item.members]
            primary, garments = members[0], [a for a, m in zip(members, item.members, strict=True)
                                             if m.role == "garment"]
            rows.append({
                "input_uri": primary.uri, "edited_uri": edit.output_uri, "garment_uris": [g.uri for g in garments],
                "edit_prompt": analysis.edit_prompt,
                "negative_prompt": analysis.negative_prompt or "",
                "recipe": item.recipe,
                "confidence": float(analysis.confidence),
                "feasibility": analysis.feasibility,
                "analysis": json.dumps(analysis.data, sort_keys=True),
                "keywords": json.dumps(item.keywords or {}, sort_keys=True),
                "variation": json.dumps(item.variation or {}, sort_keys=True),
                "source_urls": [a.source_url or "" for a in members],
                "page_urls": [a.page_url or "" for a in members],
                "source_paths": [a.source_path or "" for a in members],
                "sites": [a.site or "" for a in members],
                "categories": [a.category or "" for a in members],
                "licences": [a.licence or "" for a in members],
                "input_sha256": primary.sha256,
                "edited_sha256": edit.output_sha256,
                "vl_backend": analysis.backend, "vl_model": analysis.model_id,
                "vl_params": json.dumps(analysis.params, sort_keys=True),
                "prompt_version": analysis.prompt_version, "schema_version": analysis.schema_version,
                "edit_backend": edit.backend, "edit_model": edit.model_id,
                "edit_params": json.dumps(edit.params, sort_keys=True),
                "seed": int(edit.seed),
                "item_set_key": item.key, "vl_job_key": vl_job.key,
            })
    return rows, filtered


def export(db: Database, storage: Storage, out_dir: Path, *, fmt: str = "imagefolder",
           min_confidence: float | None = None) -> ExportReport:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("train", "data"):  # a re-export replaces the previous one
        if (out_dir / stale).exists():
            shutil.rmtree(out_dir / stale)
    rows, filtered = collect_rows(db, min_confidence=min_confidence)
    if fmt == "imagefolder":
        _write_imagefolder(storage, out_dir, rows)
    else:
        _write_parquet(storage, out_dir, rows)
    summary = summarise(db, exported=len(rows), filtered=filtered)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    sheet = write_contact_sheet(storage, out_dir / "contact_sheet.html", rows, summary)
    log.info("exported %d rows (%d filtered out) to %s as %s", len(rows), filtered, out_dir, fmt)
    return ExportReport(out_dir, fmt, len(rows), filtered, summary_path, sheet)


def _copy(storage: Storage, uri: str, folder: Path) -> str:
    name = uri.rsplit("/", 1)[-1]  # content-addressed: the name is the hash
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
    features = Features({
        "input_image": Image(), "edit_prompt": text, "edited_image": Image(), "garment_images": List(Image()),
        "negative_prompt": text, "recipe": text, "confidence": Value("float64"), "feasibility": text,
        "analysis": text, "keywords": text, "variation": text,
        "source_urls": List(text), "page_urls": List(text), "source_paths": List(text), "sites": List(text),
        "categories": List(text), "licences": List(text), "input_sha256": text, "edited_sha256": text,
        "vl_backend": text, "vl_model": text, "vl_params": text, "prompt_version": text,
        "schema_version": text, "edit_backend": text, "edit_model": text, "edit_params": text,
        "seed": Value("int64"), "item_set_key": text, "vl_job_key": text,
    })
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(records, features=features) if records else Dataset.from_dict(
        {k: [] for k in features}, features=features)
    ds.to_parquet(str(data / "train-00000-of-00001.parquet"))
