"""``export --format vl-sft``: the VL model's supervised examples, as LLaMA-Factory, ms-swift and
TRL read them (see :class:`VlSftWriter`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from common.dataset.card import CardConfig
from common.dataset.layouts import LayoutPlan, controls_of
from common.dataset.outfolder import OwnedFolder
from common.dataset.writers import ROW_OVERHEAD, ParquetWriter, copy_once
from common.store.storage import Storage

log = logging.getLogger(__name__)


VL_DATASET = "synthpipe_vl_sft"  # the dataset's name in LLaMA-Factory's dataset_info.json


def vl_features() -> Any:
    """TRL's conversational vision form: ``messages`` with typed parts, and the images in order."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({"messages": List({"role": Value("string"), "content": List(part)}), "images": List(Image()),
                     "edit_id": Value("int64"), "recipe": Value("string"), "vl_model": Value("string"),
                     "prompt_version": Value("string")})


class VlSftWriter(ParquetWriter):
    """The VL model's supervised examples, one per analysis of the chosen edits (each once): the VL
    stage's system prompt, the set's photos and its user prompt -> the analysis JSON.

    - ``vl-sft/train.jsonl`` (LLaMA-Factory ``sharegpt`` with ``<image>`` markers; its entry in
      ``vl-sft/dataset_info.json``), image paths relative to ``vl-sft/``;
    - ``vl-sft/swift.jsonl``: the same lines with absolute image paths (ms-swift's ``--dataset``);
    - ``data/train-XXXXX-of-YYYYY.parquet``: TRL's form (typed ``messages`` parts, an ``images`` column).
    """

    top = "vl-sft"

    def __init__(self, storage: Storage, owned: OwnedFolder, metrics: list[str], *, shard_size: int,
                 plan: LayoutPlan) -> None:
        super().__init__(storage, owned, metrics, shard_size=shard_size)
        self.features = vl_features()
        self.schema = self.features.arrow_schema
        self.plan = plan
        (owned.root / self.top / "images").mkdir(parents=True, exist_ok=True)
        self.factory = (owned.root / self.top / "train.jsonl").open("w", encoding="utf-8")
        self.swift = (owned.root / self.top / "swift.jsonl").open("w", encoding="utf-8")
        self.seen: set[str] = set()  # the analyses written (their VL job keys)
        self.rows = self.skipped = 0

    @classmethod
    def paths(cls, plan: LayoutPlan) -> tuple[list[str], list[str]]:
        return ([f"{cls.top}/train.jsonl", f"{cls.top}/swift.jsonl", f"{cls.top}/dataset_info.json"],
                ["data", f"{cls.top}/images"])

    def write(self, row: dict[str, Any]) -> None:
        from common.core.prompts import render_for

        key = row.get("vl_job_key") or ""
        if not key or key in self.seen:  # no analysis (an imported edit), or written for an earlier edit
            return
        self.seen.add(key)
        uris = controls_of(row)
        try:
            system, user = render_for(row["recipe"], row["prompt_version"], keywords=json.loads(row["keywords"]),
                                      variation=json.loads(row["variation"]) or None, n_images=len(uris))
        except Exception as exc:  # a prompt version this synthpipe no longer has, or a missing keyword
            log.warning("analysis of edit %s left out of vl-sft: %s", row["edit_id"], exc)
            self.skipped += 1
            return
        answer = row["analysis"]
        images = [copy_once(self.storage, self.owned, f"{self.top}/images", u).removeprefix(f"{self.top}/")
                  for u in uris]
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": "<image>" * len(uris) + user},
                    {"role": "assistant", "content": answer}]
        self.factory.write(json.dumps({"messages": messages, "images": images}, ensure_ascii=False) + "\n")
        self.swift.write(json.dumps({"messages": messages, "images": [str(self.plan.root / self.top / p)
                                                                        for p in images]}, ensure_ascii=False) + "\n")
        self.rows += 1
        super().write({**row, "_system": system, "_user": user, "_answer": answer})

    def _images(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"all": [self.storage.get(u) for u in controls_of(row)]}

    def _prepare(self, row: dict[str, Any], images: dict[str, Any]) -> tuple[Any, int]:
        def text(value: str) -> list[dict[str, Any]]:
            return [{"type": "text", "text": value}]

        record = {"messages": [{"role": "system", "content": text(row["_system"])},
                               {"role": "user", "content": [{"type": "image", "text": None} for _ in images["all"]]
                                + text(row["_user"])},
                               {"role": "assistant", "content": text(row["_answer"])}],
                  "images": [{"bytes": b, "path": None} for b in images["all"]], "edit_id": row["edit_id"],
                  "recipe": row["recipe"], "vl_model": row["vl_model"], "prompt_version": row["prompt_version"]}
        size = ROW_OVERHEAD + sum(len(b) for b in images["all"]) + len(row["_system"]) + len(row["_user"]) + len(
            row["_answer"])
        return record, size

    def close(self) -> None:
        self.factory.close()
        self.swift.close()
        super().close()
        entry = {VL_DATASET: {"file_name": "train.jsonl", "formatting": "sharegpt",
                              "columns": {"messages": "messages", "images": "images"},
                              "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                       "assistant_tag": "assistant", "system_tag": "system"}}}
        (self.owned.root / self.top / "dataset_info.json").write_text(json.dumps(entry, indent=2) + "\n")

    def abort(self) -> None:
        self.factory.close()
        self.swift.close()
        super().abort()

    def card_configs(self) -> list[CardConfig]:
        # the card names the parquet only: ``datasets`` reads every config of a folder with one builder
        return [CardConfig("default", "data/train-*.parquet", self.rows, self.features, inferred=True)]
