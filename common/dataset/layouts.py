"""Trainer layouts: the chosen edits written as outside edit-model trainers read them, row by row.

Each is one folder of the export, split per recipe where the control images differ (a try-on
example has the person and every garment as controls, an enrich one the person only), with the
config the tool reads. Images are the stored bytes, copied as they are (never re-encoded), so an
edit has the same bytes and hashes here as in every other layout.

- :class:`DiffSynthWriter` (DiffSynth-Studio 2.1, ``UnifiedDataset``): ``diffsynth/images/<sha256>.<ext>``
  (each photo once) and ``diffsynth/metadata_<recipe>.jsonl``, one line per edit:
  ``{"image": target, "prompt": instruction, "edit_image": [person, garment, …]}``, paths relative to
  ``diffsynth/`` (``--dataset_base_path``).
- :class:`MusubiWriter` (musubi-tuner 0.3, Qwen-Image-Edit): ``musubi/<recipe>/images/NAME.<ext>`` with
  ``NAME.txt`` (the caption), ``musubi/<recipe>/control/NAME_0.<ext>``, ``NAME_1.<ext>`` … (the
  person, then the garments), ``musubi/<recipe>.jsonl`` (``image_path``, ``control_path_0..n``,
  ``caption``) and the dataset configs ``musubi/<recipe>.toml`` (directories) and
  ``musubi/<recipe>-jsonl.toml`` (the JSONL).
- :class:`AiToolkitWriter` (ostris/ai-toolkit): ``ai-toolkit/<recipe>/target/NAME.<ext>`` with
  ``NAME.txt``, ``ai-toolkit/<recipe>/control/NAME.<ext>`` (the person), ``control_2/``,
  ``control_3/`` … (every garment), and a job config ``ai-toolkit/<recipe>.yaml`` (``folder_path``
  and the ``control_path`` list; FLUX.1 Kontext for one control, Qwen-Image-Edit-2509 for more).

The preference pairs and the VL model's examples are in :mod:`common.dataset.preference` and
:mod:`common.dataset.vl_sft`. Configs name absolute paths (the tools resolve them against their own working folder); export
again after moving the folder. Every file is journalled before it is made
(:mod:`common.dataset.outfolder`), like the other layouts'.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from common.dataset.card import CardConfig
from common.dataset.outfolder import OwnedFolder
from common.dataset.writers import (
    _extension,
    copy_once,
    write_new,
)
from common.store.storage import Storage

MUSUBI_RESOLUTION = (1024, 1024)  # musubi's bucket resolution; edit the TOML for another


@dataclass(frozen=True)
class LayoutPlan:
    """What a trainer layout must know before its first row."""

    root: Path  # the export folder, absolute (configs name absolute paths)
    controls: dict[str, int]  # recipe -> the most control images one of its edits has (person + garments)


def example_name(edit_id: int) -> str:
    """The file stem every file of one example shares (``edit-00000042``)."""
    return f"edit-{int(edit_id):08d}"


def _recipe(recipe: str) -> str:
    """A recipe as a folder name (recipes are short identifiers; anything else is made one)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", recipe) or "_"


def controls_of(row: dict[str, Any]) -> list[str]:
    """The example's control images: the person, then every garment (none dropped)."""
    return [row["input_uri"], *row["garment_uris"]]


class _Layout:
    """A trainer layout: planned files (configs, per-recipe JSONL) and folders filled as rows come."""

    shards = 0
    top: ClassVar[str] = ""

    def __init__(self, storage: Storage, owned: OwnedFolder, plan: LayoutPlan) -> None:
        self.storage, self.owned, self.plan = storage, owned, plan
        files, folders = self.paths(plan)
        for folder in folders:
            (owned.root / folder).mkdir(parents=True, exist_ok=True)
        self.sinks: dict[str, IO[str]] = {}
        self.rows: dict[str, int] = {}

    @classmethod
    def paths(cls, plan: LayoutPlan) -> tuple[list[str], list[str]]:
        """(files named in advance, folders whose files are named as they come)."""
        raise NotImplementedError

    def _line(self, rel: str, record: dict[str, Any]) -> None:
        sink = self.sinks.get(rel)
        if sink is None:
            (self.owned.root / rel).parent.mkdir(parents=True, exist_ok=True)
            sink = self.sinks[rel] = (self.owned.root / rel).open("w", encoding="utf-8")
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _copy_as(self, uri: str, rel_stem: str) -> str:
        """``uri``'s stored bytes as ``rel_stem.<ext>``; returns that path."""
        rel = f"{rel_stem}.{_extension(uri)}"
        write_new(self.owned, rel, self.storage.get(uri))
        return rel

    def _abs(self, rel: str) -> str:
        return str(self.plan.root / rel)

    def write(self, row: dict[str, Any]) -> None:
        recipe = _recipe(row["recipe"])
        self.rows[recipe] = self.rows.get(recipe, 0) + 1
        self._write(recipe, row)

    def _write(self, recipe: str, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self._configs()

    def abort(self) -> None:
        for sink in self.sinks.values():
            sink.close()

    def _configs(self) -> None:
        """Write the tool's configs (the recipes' row counts are known now)."""

    def card_configs(self) -> list[CardConfig]:
        """The dataset card's configs: one per recipe, the data file ``datasets`` reads and its features."""
        return [CardConfig(r, self.data_files(r), self.rows.get(r, 0), self.features(n))
                for r, n in ((_recipe(r), n) for r, n in self.plan.controls.items())]

    def data_files(self, recipe: str) -> str | list[str]:
        raise NotImplementedError

    def features(self, controls: int) -> Any:
        raise NotImplementedError

    def _text(self, rel: str, text: str) -> None:
        (self.owned.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.owned.root / rel).write_text(text, encoding="utf-8")


class DiffSynthWriter(_Layout):
    """DiffSynth-Studio's metadata JSONL per recipe (see the module's docstring)."""

    top = "diffsynth"

    @classmethod
    def paths(cls, plan: LayoutPlan) -> tuple[list[str], list[str]]:
        return [cls.metadata(r) for r in map(_recipe, plan.controls)], [f"{cls.top}/images"]

    @classmethod
    def metadata(cls, recipe: str) -> str:
        return f"{cls.top}/metadata_{recipe}.jsonl"

    def data_files(self, recipe: str) -> str:
        return self.metadata(recipe)

    def features(self, controls: int) -> Any:
        from datasets import Features, List, Value

        return Features({"image": Value("string"), "prompt": Value("string"), "edit_image": List(Value("string"))})

    def _write(self, recipe: str, row: dict[str, Any]) -> None:
        def rel(uri: str) -> str:
            return copy_once(self.storage, self.owned, f"{self.top}/images", uri).removeprefix(f"{self.top}/")

        self._line(self.metadata(recipe), {"image": rel(row["edited_uri"]), "prompt": row["edit_prompt"],
                                           "edit_image": [rel(u) for u in controls_of(row)]})

    def _configs(self) -> None:
        for recipe in map(_recipe, self.plan.controls):  # a recipe with no row still gets its (empty) file
            if self.metadata(recipe) not in self.sinks:
                self._text(self.metadata(recipe), "")


class MusubiWriter(_Layout):
    """musubi-tuner's image and control directories, JSONL and dataset TOMLs (see the module's docstring)."""

    top = "musubi"

    @classmethod
    def paths(cls, plan: LayoutPlan) -> tuple[list[str], list[str]]:
        files, folders = [], []
        for recipe in map(_recipe, plan.controls):
            files += [f"{cls.top}/{recipe}.jsonl", f"{cls.top}/{recipe}.toml", f"{cls.top}/{recipe}-jsonl.toml"]
            folders += [f"{cls.top}/{recipe}/images", f"{cls.top}/{recipe}/control"]
        return files, folders

    def data_files(self, recipe: str) -> str:
        return f"{self.top}/{recipe}.jsonl"

    def features(self, controls: int) -> Any:
        from datasets import Features, Value

        return Features({"image_path": Value("string"), **{f"control_path_{k}": Value("string") for k in range(controls)},
                         "caption": Value("string")})

    def _write(self, recipe: str, row: dict[str, Any]) -> None:
        name = example_name(row["edit_id"])
        image = self._copy_as(row["edited_uri"], f"{self.top}/{recipe}/images/{name}")
        write_new(self.owned, f"{self.top}/{recipe}/images/{name}.txt", row["edit_prompt"].encode() + b"\n")
        record: dict[str, Any] = {"image_path": self._abs(image)}
        for k, uri in enumerate(controls_of(row)):
            record[f"control_path_{k}"] = self._abs(self._copy_as(uri, f"{self.top}/{recipe}/control/{name}_{k}"))
        record["caption"] = row["edit_prompt"]
        self._line(f"{self.top}/{recipe}.jsonl", record)

    def _configs(self) -> None:
        width, height = MUSUBI_RESOLUTION
        for recipe in map(_recipe, self.plan.controls):
            if f"{self.top}/{recipe}.jsonl" not in self.sinks:
                self._text(f"{self.top}/{recipe}.jsonl", "")
            head = (f"# musubi-tuner dataset config (Qwen-Image-Edit), written by synthpipe export: recipe {recipe}, "
                    f"{self.rows.get(recipe, 0)} examples, up to {self.plan.controls[recipe]} control images each\n"
                    f"[general]\nresolution = [{width}, {height}]\ncaption_extension = \".txt\"\nbatch_size = 1\n"
                    "enable_bucket = true\nbucket_no_upscale = false\n\n[[datasets]]\n")
            cache = self.plan.root / f"{self.top}-cache"  # musubi writes its caches there: not the export's
            self._text(f"{self.top}/{recipe}.toml", head + _toml({
                "image_directory": self._abs(f"{self.top}/{recipe}/images"),
                "control_directory": self._abs(f"{self.top}/{recipe}/control"),
                "cache_directory": str(cache / recipe), "num_repeats": 1}))
            self._text(f"{self.top}/{recipe}-jsonl.toml", head.replace('caption_extension = ".txt"\n', "") + _toml({
                "image_jsonl_file": self._abs(f"{self.top}/{recipe}.jsonl"),
                "cache_directory": str(cache / f"{recipe}-jsonl"), "num_repeats": 1}))


def _toml(values: dict[str, Any]) -> str:
    """Flat ``key = value`` TOML lines (a JSON string is a valid TOML basic string)."""
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


class AiToolkitWriter(_Layout):
    """ai-toolkit's target and control folders with a job config per recipe (see the module's docstring)."""

    top = "ai-toolkit"

    def __init__(self, storage: Storage, owned: OwnedFolder, plan: LayoutPlan) -> None:
        super().__init__(storage, owned, plan)
        self.extensions: dict[str, set[str]] = {}  # recipe -> the targets' file extensions (the card's patterns)

    @staticmethod
    def control_folder(k: int) -> str:
        """The folder of an example's ``k``-th control image: the person, then the garments."""
        return "control" if k == 0 else f"control_{k + 1}"

    @classmethod
    def paths(cls, plan: LayoutPlan) -> tuple[list[str], list[str]]:
        files, folders = [], []
        for recipe, n in plan.controls.items():
            recipe = _recipe(recipe)
            files.append(f"{cls.top}/{recipe}.yaml")
            folders += [f"{cls.top}/{recipe}/target"] + [f"{cls.top}/{recipe}/{cls.control_folder(k)}"
                                                         for k in range(n)]
        return files, folders

    def data_files(self, recipe: str) -> list[str]:
        return [f"{self.top}/{recipe}/target/*.{ext}" for ext in sorted(self.extensions.get(recipe, {"png"}))]

    def features(self, controls: int) -> Any:
        from datasets import Features, Image

        return Features({"image": Image()})  # the targets (the captions beside them are not rows)

    def _write(self, recipe: str, row: dict[str, Any]) -> None:
        name = example_name(row["edit_id"])
        self.extensions.setdefault(recipe, set()).add(_extension(row["edited_uri"]))
        self._copy_as(row["edited_uri"], f"{self.top}/{recipe}/target/{name}")
        write_new(self.owned, f"{self.top}/{recipe}/target/{name}.txt", row["edit_prompt"].encode() + b"\n")
        for k, uri in enumerate(controls_of(row)):
            self._copy_as(uri, f"{self.top}/{recipe}/{self.control_folder(k)}/{name}")

    def _configs(self) -> None:
        import yaml

        for recipe, n in self.plan.controls.items():
            recipe = _recipe(recipe)
            self._text(f"{self.top}/{recipe}.yaml", yaml.safe_dump(self.job(recipe, n), sort_keys=False))

    def job(self, recipe: str, n: int) -> dict[str, Any]:
        """ai-toolkit's job config for ``recipe`` (its example configs' settings; edit to taste)."""
        controls = [self._abs(f"{self.top}/{recipe}/{self.control_folder(k)}") for k in range(n)]
        kontext = n == 1  # one control: the FLUX.1 Kontext case; more: Qwen-Image-Edit-2509
        model = ({"name_or_path": "black-forest-labs/FLUX.1-Kontext-dev", "arch": "flux_kontext", "quantize": True}
                 if kontext else {"name_or_path": "Qwen/Qwen-Image-Edit-2509", "arch": "qwen_image_edit_plus",
                                  "quantize": True, "quantize_te": True, "low_vram": True})
        return {"job": "extension", "config": {"name": f"synthpipe_{recipe}", "process": [{
            "type": "sd_trainer", "training_folder": "output", "device": "cuda:0",
            "network": {"type": "lora", "linear": 16, "linear_alpha": 16},
            "save": {"dtype": "float16", "save_every": 250, "max_step_saves_to_keep": 4},
            "datasets": [{"folder_path": self._abs(f"{self.top}/{recipe}/target"),
                          "control_path": controls[0] if kontext else controls, "caption_ext": "txt",
                          "caption_dropout_rate": 0.05, "resolution": [512, 768, 1024]}],
            "train": {"batch_size": 1, "steps": 3000, "gradient_accumulation": 1, "train_unet": True,
                      "train_text_encoder": False, "gradient_checkpointing": True, "noise_scheduler": "flowmatch",
                      "optimizer": "adamw8bit", "lr": 1e-4, "dtype": "bf16", "disable_sampling": True},
            "model": model}]},
            "meta": {"name": "[name]", "version": "1.0", "examples": self.rows.get(recipe, 0)}}


LAYOUTS: dict[str, type[_Layout]] = {"diffsynth": DiffSynthWriter, "musubi": MusubiWriter,
                                     "ai-toolkit": AiToolkitWriter}

