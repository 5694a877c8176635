"""The dataset card (``README.md``) every export writes, in the Hugging Face dataset-card form.

The YAML header names each config's data files (``configs``), its features and its split with
the row count (``dataset_info``), so ``datasets.load_dataset(OUT)`` and the Hub read the layout as
written; the body says how the data was made (the selection and the decision rule), the counts by
decision and recipe, and the licences and sites of the source photos, counted from provenance.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD = "README.md"

USAGE = {
    "imagefolder": "`datasets.load_dataset(\"OUT\")`; diffusers' InstructPix2Pix scripts: `--train_data_dir OUT`.",
    "parquet": "`datasets.load_dataset(\"OUT\")` (or `load_dataset(\"parquet\", data_dir=\"OUT\")`).",
    "webdataset": "`webdataset.WebDataset(\"OUT/data/train-{000000..N}.tar\")` or `datasets.load_dataset(\"OUT\")`.",
    "diffsynth": ("DiffSynth-Studio: `--dataset_base_path OUT/diffsynth --dataset_metadata_path "
                  "OUT/diffsynth/metadata_<recipe>.jsonl --data_file_keys image,edit_image --extra_inputs edit_image`."),
    "musubi": ("musubi-tuner: `--dataset_config OUT/musubi/<recipe>.toml` (image and control directories) or "
               "`OUT/musubi/<recipe>-jsonl.toml` (the JSONL)."),
    "ai-toolkit": "ai-toolkit: `python run.py OUT/ai-toolkit/<recipe>.yaml` (one job per recipe).",
    "preference": ("TRL / reward-model trainers: `datasets.load_dataset(\"OUT\")` gives `image`, `prompt`, "
                   "`chosen`, `rejected` (edited images) with both edits' scores and reasons."),
    "vl-sft": ("LLaMA-Factory: copy `OUT/vl-sft/dataset_info.json`'s entry into `data/dataset_info.json` "
               "(`dataset_dir: OUT/vl-sft`); ms-swift: `--dataset OUT/vl-sft/train.jsonl`; TRL: "
               "`datasets.load_dataset(\"OUT\")` (`messages` with typed parts and an `images` column)."),
    "snapshot": ("`datasets.load_dataset(\"OUT/imagefolder\")`; ai-toolkit: `folder_path: OUT/ai-toolkit/target` and "
                 "`control_path` the `OUT/ai-toolkit/control*` folders."),
}


@dataclass
class CardConfig:
    """One ``configs`` entry: its name, data files, features (``datasets.Features`` or None where the
    loader infers them) and row count."""

    name: str
    data_files: str | list[str]  # glob patterns, relative to the export folder
    rows: int
    features: Any = None
    inferred: bool = False  # ``datasets`` finds these files by itself: the card names no ``configs``

# Why ``inferred`` matters: ``datasets`` (5.2) keys its cache of a folder whose card names ``configs``
# by the card alone, not by where the files are, so two exports with equal cards would share one
# cache (an imagefolder's rows keep the first folder's image paths). Without ``configs`` the key is
# made from the files themselves. Layouts with several configs (one per recipe) must name them.


@dataclass
class Tally:
    """What the card counts as rows pass: decisions by recipe, and the source photos' licences and sites."""

    by_recipe: dict[str, Counter[str]] = field(default_factory=dict)
    licences: Counter[str] = field(default_factory=Counter)
    sites: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict[str, Any]) -> None:
        self.by_recipe.setdefault(str(row.get("recipe") or ""), Counter())[row.get("decision") or "unscored"] += 1
        for licence in row.get("licences") or []:
            self.licences[licence or "unknown"] += 1
        for site in row.get("sites") or []:
            self.sites[site or "local files"] += 1


def _bytes(root: Path, patterns: str | list[str]) -> int:
    """Bytes of the files the patterns name (streamed: a folder of any size is fine)."""
    globs = [p + "/*" if p.endswith("**") else p for p in ([patterns] if isinstance(patterns, str) else patterns)]
    return sum(p.stat().st_size for pattern in globs for p in root.glob(pattern) if p.is_file())


def _yaml_header(root: Path, configs: list[CardConfig]) -> dict[str, Any]:
    header: dict[str, Any] = {} if all(c.inferred for c in configs) else {
        "configs": [{"config_name": c.name, "data_files": [{"split": "train", "path": c.data_files}]}
                    for c in configs]}
    header["dataset_info"] = []
    for c in configs:
        info: dict[str, Any] = {"config_name": c.name}
        if c.features is not None:
            info["features"] = c.features._to_yaml_list()
        size = _bytes(root, c.data_files)
        info["splits"] = [{"name": "train", "num_bytes": size, "num_examples": c.rows}]
        info["download_size"] = size
        header["dataset_info"].append(info)
    header.update({"license": "other", "task_categories": ["image-to-image"],
                   "tags": ["synthpipe", "image-editing", "synthetic"]})
    return header


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_card(path: Path, *, layout: str, selection: str, configs: list[CardConfig], tally: Tally,
               rows: int, notes: list[str] | None = None) -> None:
    """Write ``README.md`` for an export of ``rows`` rows in ``layout`` (``selection`` says how they
    were chosen)."""
    import yaml

    decisions = sorted({d for c in tally.by_recipe.values() for d in c})
    by_recipe = [(recipe or "(none)", *(counts.get(d, 0) for d in decisions), sum(counts.values()))
                 for recipe, counts in sorted(tally.by_recipe.items())]
    totals = Counter[str]()
    for counts in tally.by_recipe.values():
        totals.update(counts)
    body = [
        f"# synthpipe export ({layout})", "",
        f"{rows} examples of instruction-guided image edits (try-on and enrich recipes), made by synthpipe: "
        "photos crawled or imported with their provenance, an edit instruction written by a vision-language "
        "model, the edit made by an image-edit model, then scored (change, identity, CLIP, judge) and decided. "
        "The decision is the final one: reviewers' majority where people reviewed, the AI's otherwise.", "",
        f"Selection: {selection}. Images are the stored bytes, never re-encoded, so an edit has the same file "
        "hash in every layout.", "",
        f"How to use: {USAGE.get(layout, '')}", "",
        "## Counts by decision", "", _table(("decision", "examples"), sorted(totals.items())), "",
        "## Counts by recipe", "", _table(("recipe", *decisions, "total"), by_recipe), "",
        "## Licences of the source photos", "",
        "Counted over every photo of every example (a try-on example counts the person and each garment). "
        "Check each source's licence before you publish or train on this data.", "",
        _table(("licence", "photos"), tally.licences.most_common()), "",
        "## Sites of the source photos", "", _table(("site", "photos"), tally.sites.most_common(50)), "",
    ]
    if not all(c.inferred for c in configs):
        notes = [*(notes or []), "`datasets` caches a folder whose card names `configs` by the card, not by the "
                 "folder: load another export with the same counts with `download_mode=\"force_redownload\"` "
                 "or its own `cache_dir`."]
    if notes:
        body += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    header = yaml.safe_dump(_yaml_header(path.parent, configs), sort_keys=False, allow_unicode=True)
    path.write_text(f"---\n{header}---\n\n" + "\n".join(body), encoding="utf-8")
