"""``export --format preference``: pairs of a chosen and a rejected edit of the same input and
instruction, the form DPO and reward-model trainers read.

:class:`PreferenceWriter` writes ``data/train-XXXXX-of-YYYYY.parquet`` (images embedded, the
``datasets`` features in the schema), one row per (input, instruction, chosen edit, rejected edit),
chosen and rejected by the final decision (people's over the AI's), with both edits' scores,
reasons and who decided; the pairs stream from :func:`common.dataset.export_rows.iter_pairs`.

Pairing: where an analysis made N candidate edits and the selection step chose one (``selections``),
the selected edit (a person's overrule over the step's pick) is chosen and each other decided candidate
of that analysis is rejected (``pairing`` "selection"); every other edit pairs as before best-of-N, each
finally accepted edit with each finally rejected one of the same input and instruction (``pairing``
"decision").
"""

from __future__ import annotations

from typing import Any

from common.dataset.card import CardConfig
from common.dataset.export_rows import SELECTED
from common.dataset.outfolder import OwnedFolder
from common.dataset.writers import ROW_OVERHEAD, ParquetWriter, _text_bytes
from common.domain.overrule import NOT_SELECTED
from common.store.storage import Storage

#: what each side of a preference pair carries besides its image
PAIR_SIDE = ("edit_id", "decision", "reasons", "review_tags", "scores", "judge", "failed_checks", "edited_sha256",
             "edit_model", "seed", "candidate", "selection", "selection_rank")
#: how the pair was made: the selected candidate against another, or accepted against rejected
PAIRINGS = ("selection", "decision")


def pair_row(chosen: dict[str, Any], rejected: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    """One preference row: the input (person and garments) and instruction, the chosen and the rejected
    edit with each one's decision, who made it (``review`` or ``ai``), reasons and scores."""
    row: dict[str, Any] = {
        "input_uri": chosen["input_uri"], "garment_uris": chosen["garment_uris"], "chosen_uri": chosen["edited_uri"],
        "rejected_uri": rejected["edited_uri"], "prompt": chosen["edit_prompt"], "recipe": chosen["recipe"],
        "item_set_key": chosen["item_set_key"], "input_sha256": chosen["input_sha256"],
        "licences": chosen["licences"], "sites": chosen["sites"],
        "pairing": PAIRINGS[0] if chosen.get("selection") == SELECTED else PAIRINGS[1]}
    for side, r in (("chosen", chosen), ("rejected", rejected)):
        row.update({f"{side}_{k}": r[k] for k in PAIR_SIDE})
        row[f"{side}_decided_by"] = _decided_by(r)
        row.update({f"{side}_{m}": r.get(m) for m in metrics})
    return row


def _decided_by(row: dict[str, Any]) -> str:
    """Who made the side's decision: ``review`` (people), ``ai``, or for a candidate passed over by a
    selection, ``selection`` (the step's pick) or ``person`` (a person's overrule)."""
    if NOT_SELECTED in row["reasons"]:
        return "person" if row.get("selection_by") == "person" else "selection"
    return "review" if row.get("review_decision") else "ai"


def preference_features(metrics: list[str]) -> Any:
    """The ``datasets`` features of a preference row."""
    from datasets import Features, Image, List, Value

    text, texts = Value("string"), List(Value("string"))
    features: dict[str, Any] = {"input_image": Image(), "garment_images": List(Image()), "prompt": text,
                                "chosen": Image(), "rejected": Image(), "recipe": text, "item_set_key": text,
                                "input_sha256": text, "licences": texts, "sites": texts, "pairing": text}
    for side in ("chosen", "rejected"):
        features.update({f"{side}_edit_id": Value("int64"), f"{side}_decision": text, f"{side}_decided_by": text,
                         f"{side}_reasons": texts, f"{side}_review_tags": texts, f"{side}_scores": text,
                         f"{side}_judge": text, f"{side}_failed_checks": text, f"{side}_edited_sha256": text,
                         f"{side}_edit_model": text, f"{side}_seed": Value("int64"),
                         f"{side}_candidate": Value("int64"), f"{side}_selection": text,
                         f"{side}_selection_rank": Value("int64")})
        features.update({f"{side}_{m}": Value("float64") for m in metrics})
    return Features(features)


class PreferenceWriter(ParquetWriter):
    """Preference pairs as parquet shards (``data/train-XXXXX-of-YYYYY.parquet``), images embedded,
    written as pairs stream in (:func:`common.dataset.export_rows.iter_pairs`)."""

    def __init__(self, storage: Storage, owned: OwnedFolder, metrics: list[str], *, shard_size: int) -> None:
        super().__init__(storage, owned, metrics, shard_size=shard_size)
        self.features = preference_features(metrics)
        self.schema = self.features.arrow_schema
        self.rows = 0

    def _images(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"input": self.storage.get(row["input_uri"]), "chosen": self.storage.get(row["chosen_uri"]),
                "rejected": self.storage.get(row["rejected_uri"]),
                "garments": [self.storage.get(u) for u in row["garment_uris"]]}

    def _prepare(self, row: dict[str, Any], images: dict[str, Any]) -> tuple[Any, int]:
        record = {k: v for k, v in row.items() if not k.endswith(("_uri", "_uris"))}
        for role in ("chosen", "rejected"):
            record[role] = {"bytes": images[role], "path": None}
        record["input_image"] = {"bytes": images["input"], "path": None}
        record["garment_images"] = [{"bytes": b, "path": None} for b in images["garments"]]
        size = (ROW_OVERHEAD + len(images["input"]) + len(images["chosen"]) + len(images["rejected"])
                + sum(len(g) for g in images["garments"]) + sum(_text_bytes(v) for v in row.values()))
        self.rows += 1
        return record, size

    def card_configs(self) -> list[CardConfig]:
        return [CardConfig("default", "data/train-*.parquet", self.rows, self.features, inferred=True)]
