"""``synthpipe export --format diffsynth|musubi|ai-toolkit`` and the dataset card every export writes.

Each layout is read the way its tool reads it: ``datasets`` (installed) reads the card and every
config it names; DiffSynth-Studio, musubi-tuner and ai-toolkit need CUDA torch or are not on PyPI,
so their reading is re-done here from their source at the version named (DiffSynth-Studio 2.1.12
``UnifiedDataset``; musubi-tuner 0.3.4 ``ImageDirectoryDatasource`` / ``ImageJsonlDatasource``;
ai-toolkit ``FileItemDTO`` control lookup, commit 27a03a9). The store holds a try-on set of a person
and three garments, one of a person and one garment, and two enrich sets (person only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from common.cli import main

SIDE = 64


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _ext(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ROWS: list[dict[str, Any]] = [
    {"prompt": "dress her in the three garments", "input": _png(1), "edited": _png(101),
     "garments": [_png(11), _jpeg(12), _png(13)]},
    {"prompt": "put the jacket on him", "input": _jpeg(2), "edited": _png(102), "garments": [_png(21)]},
    {"prompt": "relight at dusk", "input": _png(3), "edited": _jpeg(103), "garments": []},
    {"prompt": "make it winter", "input": _png(4), "edited": _png(104), "garments": []},
]
GOOD = {"change": {"ssim": 0.6, "mad": 0.1},
        "identity": {"faces_input": 1, "faces_edited": 1, "identity_distance": 0.2},
        "judge": {"overall": 8.5}}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if "--json" in argv and code == 0 else out.out), out.err


def _pairs(root: Path, rows: list[dict[str, Any]] = ROWS) -> Path:
    train = root / "train"
    train.mkdir(parents=True)
    with (train / "metadata.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            names = {}
            for key in ("input", "edited"):
                names[key] = f"{i}-{key}.{_ext(row[key])}"
                (train / names[key]).write_bytes(row[key])
            garments = []
            for j, g in enumerate(row["garments"]):
                garments.append(f"{i}-g{j}.{_ext(g)}")
                (train / garments[-1]).write_bytes(g)
            fh.write(json.dumps({"input_image_file_name": names["input"], "edited_image_file_name": names["edited"],
                                 "garment_images_file_names": garments, "edit_prompt": row["prompt"]}) + "\n")
    return root


@pytest.fixture
def store(db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    """The four edits imported and accepted by the real decision step; ``prompt -> edit id``."""
    from common.core.settings import get_settings
    from common.domain.decide import decide_edit
    from common.store.rows import Edit, Score

    code, got, err = _cli(capsys, "import", str(_pairs(tmp_path / "pairs")), "--json")
    assert code == 0 and got["imported"] == len(ROWS), err
    with db.session() as s:
        edits = s.scalars(select(Edit).order_by(Edit.id)).all()
        for e in edits:
            for scorer, values in GOOD.items():
                s.add(Score(edit_id=e.id, scorer=scorer, metrics=values, params={}))
            s.flush()
            assert decide_edit(s, e.id, get_settings()).decision == "accepted"
        s.commit()
        return {str(e.edit_prompt): e.id for e in edits}


def _export(capsys: pytest.CaptureFixture[str], out: Path, fmt: str) -> dict[str, Any]:
    code, got, err = _cli(capsys, "export", str(out), "--format", fmt, "--json")
    assert code == 0, err
    return got


def _card(out: Path) -> tuple[dict[str, Any], str]:
    """The card's YAML header (as the Hub library parses it) and its body."""
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    return card.data.to_dict(), card.text


def _controls_of(row: dict[str, Any]) -> list[str]:
    return [_sha(row["input"]), *(_sha(g) for g in row["garments"])]


def test_card_in_every_export_names_configs_features_and_counts_that_datasets_reads(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    for fmt in ("imagefolder", "parquet", "diffsynth", "musubi", "ai-toolkit"):
        out = tmp_path / fmt
        assert _export(capsys, out, fmt)["rows"] == 4
        header, body = _card(out)
        # one config that datasets finds by itself: no `configs` (datasets would key its cache by the card alone)
        names = [c["config_name"] for c in header.get("configs", [{"config_name": "default"}])]
        assert ("configs" in header) == (fmt not in ("imagefolder", "parquet"))
        infos = {i["config_name"]: i for i in header["dataset_info"]}
        assert set(infos) == set(names)
        total = 0
        for name in names:
            ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "hf"))
            declared = datasets.Features._from_yaml_list(infos[name]["features"])
            # the loader infers a column with no value in these rows as null; every other column is as declared
            assert set(ds.features) == set(declared), (fmt, name)
            differ = {k for k in declared if ds.features[k] != declared[k]}
            assert all("null" in str(ds.features[k]) for k in differ), (fmt, name, differ)
            assert ds.cast(declared).features == declared
            assert len(ds) == infos[name]["splits"][0]["num_examples"] > 0
            assert infos[name]["splits"][0]["num_bytes"] > 0
            total += len(ds)
        assert total == 4
        assert (names == ["default"]) == (fmt in ("imagefolder", "parquet"))
        assert ("force_redownload" in body) == ("configs" in header)
        if fmt == "diffsynth":
            assert sorted(names) == ["enrich", "tryon"]
        assert "| accepted | 4 |" in body and "| tryon | 2 | 2 |" in body and "| enrich | 2 | 2 |" in body
        assert "## Licences of the source photos" in body and "| unknown | 8 |" in body  # 4 people + 4 garments
        assert "README.md" in json.loads((out / ".synthpipe-export").read_text())["files"]
    ds = datasets.load_dataset(str(tmp_path / "imagefolder"), split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds[0]["input_image"], Image.Image) and len(ds[0]["garment_images"]) == 3


def test_diffsynth_metadata_reads_as_unified_dataset_does_with_every_garment_and_original_bytes(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    _export(capsys, out, "diffsynth")
    base = out / "diffsynth"
    seen = {}
    for recipe in ("tryon", "enrich"):
        # UnifiedDataset.load_metadata (".jsonl": one json.loads per line), then for each of
        # data_file_keys "image,edit_image": ToAbsolutePath(base_path) >> LoadImage (a list: each item)
        metadata = []
        with open(base / f"metadata_{recipe}.jsonl") as f:
            for line in f:
                metadata.append(json.loads(line.strip()))
        for data in metadata:
            assert set(data) == {"image", "prompt", "edit_image"} and isinstance(data["edit_image"], list)
            target = os.path.join(str(base), data["image"])
            Image.open(target).convert("RGB")
            edits = [os.path.join(str(base), p) for p in data["edit_image"]]
            assert all(Image.open(p).convert("RGB").size == (SIDE, SIDE) for p in edits)
            seen[data["prompt"]] = (recipe, _sha(Path(target).read_bytes()), [_sha(Path(p).read_bytes()) for p in edits])
    assert set(seen) == {r["prompt"] for r in ROWS}
    for row in ROWS:
        recipe, target, controls = seen[row["prompt"]]
        assert recipe == ("tryon" if row["garments"] else "enrich")
        assert target == _sha(row["edited"]) and controls == _controls_of(row)  # every garment, bytes untouched
    images = sorted(p.name for p in (base / "images").iterdir())
    assert images == sorted({f"{_sha(b)}.{_ext(b)}" for r in ROWS for b in (r["input"], r["edited"], *r["garments"])})


def _musubi_directory_controls(image_dir: Path, control_dir: Path) -> dict[str, list[Path]]:
    """musubi-tuner 0.3.4 ``ImageDirectoryDatasource``: images with a caption, and for each the
    control images named ``<stem>.*`` or ``<stem>_<digits>.*``, ordered by the digits."""
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    images = [p for p in image_dir.iterdir() if p.suffix.lower() in exts and p.with_suffix(".txt").exists()]
    controls = {p for p in control_dir.iterdir() if p.suffix.lower() in exts}
    found = {}
    for image in sorted(images, key=lambda p: len(p.name), reverse=True):
        matches = [p for p in controls if p.name.startswith(image.stem + ".") or p.name.startswith(image.stem + "_")]
        controls -= set(matches)

        def key(path: Path, stem: str = image.stem) -> int:
            if path.stem == stem:
                return 0
            digits = path.stem.rsplit("_", 1)[-1]
            assert digits.isdigit(), path
            return int(digits) + 1

        found[image.name] = sorted(matches, key=key)
    assert len(found) == len(images)  # musubi raises when an image has no control
    return found


def test_musubi_toml_directories_and_jsonl_read_as_musubi_does(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mu"
    _export(capsys, out, "musubi")
    by_prompt = {r["prompt"]: r for r in ROWS}
    for recipe, count in (("tryon", 2), ("enrich", 2)):
        config = tomllib.loads((out / "musubi" / f"{recipe}.toml").read_text())
        assert config["general"]["caption_extension"] == ".txt" and len(config["datasets"]) == 1
        dataset = config["datasets"][0]
        image_dir, control_dir = Path(dataset["image_directory"]), Path(dataset["control_directory"])
        assert image_dir.is_absolute() and image_dir.is_dir() and control_dir.is_dir()
        assert not Path(dataset["cache_directory"]).is_relative_to(out / "musubi")  # musubi's caches are not ours
        found = _musubi_directory_controls(image_dir, control_dir)
        assert len(found) == count
        for name, controls in found.items():
            caption = (image_dir / name).with_suffix(".txt").read_text(encoding="utf-8").strip()
            row = by_prompt[caption]
            assert _sha((image_dir / name).read_bytes()) == _sha(row["edited"])
            assert [_sha(p.read_bytes()) for p in controls] == _controls_of(row)
        # ImageJsonlDatasource: image_path, control_path_0..n, caption
        jsonl = tomllib.loads((out / "musubi" / f"{recipe}-jsonl.toml").read_text())["datasets"][0]
        lines = [json.loads(line) for line in Path(jsonl["image_jsonl_file"]).read_text().splitlines()]
        assert len(lines) == count
        for item in lines:
            keys = sorted((k for k in item if k.startswith("control_path_")), key=lambda k: int(k.split("_")[-1]))
            assert keys == [f"control_path_{i}" for i in range(len(keys))]
            row = by_prompt[item["caption"]]
            assert _sha(Path(item["image_path"]).read_bytes()) == _sha(row["edited"])
            assert [_sha(Path(item[k]).read_bytes()) for k in keys] == _controls_of(row)


AI_TOOLKIT_EXTS = [".jpg", ".jpeg", ".png", ".webp"]  # toolkit/dataloader_mixins.py img_ext_list


def test_ai_toolkit_job_per_recipe_keeps_every_garment_and_controls_out_of_targets(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kit"
    _export(capsys, out, "ai-toolkit")
    by_prompt = {r["prompt"]: r for r in ROWS}
    for recipe, count, controls in (("tryon", 2, 4), ("enrich", 2, 1)):
        job = yaml.safe_load((out / "ai-toolkit" / f"{recipe}.yaml").read_text())
        assert job["job"] == "extension"
        process = job["config"]["process"][0]
        dataset = process["datasets"][0]
        folder = Path(dataset["folder_path"])
        paths = dataset["control_path"] if isinstance(dataset["control_path"], list) else [dataset["control_path"]]
        assert len(paths) == controls
        assert process["model"]["arch"] == ("flux_kontext" if controls == 1 else "qwen_image_edit_plus")
        # the targets folder holds only targets and their captions: no control image can pass as a target
        targets = [p for p in folder.iterdir() if p.suffix in AI_TOOLKIT_EXTS]
        assert len(targets) == count and len(list(folder.iterdir())) == 2 * count
        for target in targets:
            caption = target.with_suffix("." + dataset["caption_ext"]).read_text(encoding="utf-8").strip()
            row = by_prompt[caption]
            assert _sha(target.read_bytes()) == _sha(row["edited"])
            # FileItemDTO: for each control_path, the first <stem><ext> that exists
            found = []
            for control_path in paths:
                for ext in AI_TOOLKIT_EXTS:
                    if os.path.exists(os.path.join(control_path, target.stem + ext)):
                        found.append(os.path.join(control_path, target.stem + ext))
            assert [_sha(Path(p).read_bytes()) for p in found] == _controls_of(row)


def test_trainer_layouts_are_owned_reexported_byte_for_byte_and_never_write_over_a_users_file(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"

    def digests() -> dict[str, str]:
        return {p.relative_to(out).as_posix(): _sha(p.read_bytes()) for p in sorted(out.rglob("*"))
                if p.is_file() and p.name not in ("contact_sheet.html", "summary.json")}

    _export(capsys, out, "musubi")
    first = digests()
    marker = json.loads((out / ".synthpipe-export").read_text())
    listed = set(marker["files"])
    assert {rel for rel in first if not rel.startswith(".synthpipe")} <= listed  # every file it wrote is listed
    (out / "musubi" / "tryon" / "images" / "mine.txt").write_text("a user's note")
    _export(capsys, out, "musubi")
    assert (out / "musubi" / "tryon" / "images" / "mine.txt").read_text() == "a user's note"
    again = digests()
    again.pop("musubi/tryon/images/mine.txt")
    assert again == first
    # a user's file where the next export would write is refused, and nothing is deleted
    user = out / "ai-toolkit" / "enrich" / "target" / "edit-00000003.txt"
    user.parent.mkdir(parents=True)
    user.write_text("a user's caption")
    code, _, err = _cli(capsys, "export", str(out), "--format", "ai-toolkit")
    assert code == 2 and "was not written by synthpipe export" in err and "ai-toolkit" in err
    assert user.read_text() == "a user's caption" and digests().items() >= first.items()
    user.unlink()
    user.parent.rmdir()
    user.parent.parent.rmdir()
    user.parent.parent.parent.rmdir()
    _export(capsys, out, "ai-toolkit")  # another layout into the same folder: the musubi files go, the user's stays
    assert not (out / "musubi" / "enrich").exists() and (out / "musubi" / "tryon" / "images" / "mine.txt").exists()
    assert {p.name for p in (out / "ai-toolkit").iterdir()} == {"tryon", "enrich", "tryon.yaml", "enrich.yaml"}


LOST = {"change": {"ssim": 0.6, "mad": 0.1},
        "identity": {"faces_input": 1, "faces_edited": 1, "identity_distance": 0.7},
        "judge": {"overall": 8.0}}
#: more edits of the same inputs: (row of ROWS it shares input and garments with, prompt, edited, metrics)
VARIANTS = [(0, ROWS[0]["prompt"], _png(201), LOST),  # the AI rejects it: a pair with ROWS[0]
            (2, ROWS[2]["prompt"], _png(203), GOOD),  # the AI accepts it, a reviewer rejects it: a pair with ROWS[2]
            (3, "make it spring", _png(204), LOST)]  # another instruction: no pair


def test_preference_pairs_chosen_and_rejected_by_the_final_decision_with_scores_and_reasons(
        store: dict[str, int], db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    from common.core.settings import get_settings
    from common.domain.decide import decide_edit
    from common.domain.review_queue import record
    from common.review.auth import add_reviewer
    from common.store.rows import Edit, Score

    more = [dict(ROWS[i], prompt=prompt, edited=edited) for i, prompt, edited, _ in VARIANTS]
    code, got, err = _cli(capsys, "import", str(_pairs(tmp_path / "more", more)), "--json")
    assert code == 0 and got["imported"] == 3, err
    with db.session() as s:
        added = s.scalars(select(Edit).where(Edit.id.not_in(list(store.values()))).order_by(Edit.id)).all()
        for e, (_, _, _, metrics) in zip(added, VARIANTS, strict=True):
            for scorer, values in metrics.items():
                s.add(Score(edit_id=e.id, scorer=scorer, metrics=values, params={}))
            s.flush()
            decide_edit(s, e.id, get_settings())
        alice = add_reviewer(s, "alice", "a long enough password")
        s.flush()
        record(s, alice.id, [added[1].id], "reject", tags=["identity_lost"])
        s.commit()
        ids = [e.id for e in added]

    got = _export(capsys, tmp_path / "pref", "preference")
    assert got["rows"] == 2 and got["by_decision"] == {"pairs": 2}
    ds = datasets.load_dataset(str(tmp_path / "pref"), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 2 and {"input_image", "prompt", "chosen", "rejected", "garment_images"} <= set(ds.column_names)
    pairs = {(r["chosen_edit_id"], r["rejected_edit_id"]): r for r in ds}
    first, second = store[ROWS[0]["prompt"]], store[ROWS[2]["prompt"]]
    assert set(pairs) == {(first, ids[0]), (second, ids[1])}
    tryon = pairs[first, ids[0]]
    assert tryon["prompt"] == ROWS[0]["prompt"] and len(tryon["garment_images"]) == 3
    assert tryon["rejected_reasons"] == ["identity_lost"] and tryon["rejected_decided_by"] == "ai"
    assert tryon["chosen_identity_distance"] == pytest.approx(0.2) and tryon["rejected_identity_distance"] == pytest.approx(0.7)
    assert json.loads(tryon["rejected_scores"])["identity"]["metrics"]["identity_distance"] == pytest.approx(0.7)
    reviewed = pairs[second, ids[1]]
    assert reviewed["rejected_decided_by"] == "review" and reviewed["rejected_review_tags"] == ["identity_lost"]
    assert reviewed["rejected_decision"] == "rejected" and reviewed["chosen_decision"] == "accepted"
    # the stored bytes, untouched: the same hashes as the originals
    raw = ds.cast_column("chosen", datasets.Image(decode=False)).cast_column("rejected", datasets.Image(decode=False))
    row = next(r for r in raw if r["chosen_edit_id"] == second)
    assert _sha(row["chosen"]["bytes"]) == _sha(ROWS[2]["edited"]) and _sha(row["rejected"]["bytes"]) == _sha(_png(203))
    header, body = _card(tmp_path / "pref")
    assert header["dataset_info"][0]["splits"][0]["num_examples"] == 2 and "| pair | 2 |" in body


VARIATION = {"occasion": "a wedding", "season": "spring", "setting": "a garden", "lighting": "soft", "style": "classic",
             "art_style": "photo", "background": "a garden", "camera_angle": "eye level"}


def _analyse(db: Any, store: dict[str, int]) -> dict[int, dict[str, Any]]:
    """An analysis (and its VL job) for each edit's item set, as the VL stage stores them;
    ``edit id -> analysis data``."""
    from common.store.rows import Analysis, Edit, ItemSet, Job

    out = {}
    with db.session() as s:
        for prompt, edit_id in store.items():
            edit = s.get(Edit, edit_id)
            item = s.get(ItemSet, edit.item_set_id)
            item.variation = VARIATION
            job = Job(stage="vl", status="done", key=f"vl:test:{edit_id}", item_set_id=item.id, payload={})
            s.add(job)
            s.flush()
            data = {"edit_prompt": prompt, "confidence": 0.9, "feasibility": "high", "notes": f"edit {edit_id}"}
            analysis = Analysis(job_id=job.id, item_set_id=item.id, recipe=item.recipe, schema_version="v1",
                                prompt_version="v1", backend="test", model_id="tiny-vl", params={},
                                raw_text=json.dumps(data), data=data, edit_prompt=prompt, negative_prompt="blur",
                                confidence=0.9, feasibility="high", timings={})
            s.add(analysis)
            s.flush()
            edit.analysis_id = analysis.id
            out[edit_id] = data
        s.commit()
    return out


def test_vl_sft_one_example_per_analysis_for_llamafactory_swift_and_trl(
        store: dict[str, int], db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets
    from trl.data_utils import is_conversational, prepare_multimodal_messages

    from common.core.prompts import render_for

    analyses = _analyse(db, store)
    out = tmp_path / "vl"
    _export(capsys, out, "vl-sft")
    by_prompt = {r["prompt"]: r for r in ROWS}
    # LLaMA-Factory (data/README.md, sharegpt): the dataset_info entry, <image> markers = images, system turn
    info = json.loads((out / "vl-sft" / "dataset_info.json").read_text())["synthpipe_vl_sft"]
    assert info["formatting"] == "sharegpt" and info["tags"]["system_tag"] == "system"
    lines = [json.loads(line) for line in (out / "vl-sft" / info["file_name"]).read_text().splitlines()]
    swift = [json.loads(line) for line in (out / "vl-sft" / "swift.jsonl").read_text().splitlines()]
    assert len(lines) == len(swift) == len(store) == 4
    for line, sw in zip(lines, swift, strict=True):
        roles = [m[info["tags"]["role_tag"]] for m in line[info["columns"]["messages"]]]
        assert roles == ["system", "user", "assistant"]
        system, user, answer = (m["content"] for m in line["messages"])
        data = json.loads(answer)
        row = by_prompt[data["edit_prompt"]]
        assert data == analyses[store[row["prompt"]]]
        n = 1 + len(row["garments"])
        assert user.count("<image>") == len(line["images"]) == n
        recipe = "tryon" if row["garments"] else "enrich"
        assert (system, user.replace("<image>", "")) == render_for(recipe, "v1", keywords={}, variation=VARIATION,
                                                                    n_images=n)
        assert [_sha((out / "vl-sft" / p).read_bytes()) for p in line["images"]] == _controls_of(row)
        assert sw["messages"] == line["messages"] and all(Path(p).is_absolute() and Path(p).exists() for p in sw["images"])
    # TRL: the parquet's conversational form, images filled in by TRL's own preparation
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 4
    for example in ds:
        assert is_conversational(example)
        prepared = prepare_multimodal_messages(example["messages"], example["images"])
        parts = [p for m in prepared for p in m["content"] if p["type"] == "image"]
        assert len(parts) == len(example["images"]) and all(isinstance(p["image"], Image.Image) for p in parts)
        assert json.loads(prepared[-1]["content"][0]["text"]) == analyses[example["edit_id"]]
    header, _ = _card(out)
    assert header["dataset_info"][0]["splits"][0]["num_examples"] == 4


def test_snapshot_export_copies_the_stored_bytes_keeps_every_garment_and_has_a_card(
        store: dict[str, int], db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    from common.store.rows import Snapshot

    ids = sorted(store.values())
    with db.session() as s:
        snap = Snapshot(sha256="e" * 64, target="edit", edit_ids=ids, size=len(ids), selection={})
        s.add(snap)
        s.flush()
        snap_id = snap.id
        s.commit()
    out = tmp_path / "snap"
    code, _, err = _cli(capsys, "export", str(out), "--snapshot", str(snap_id))
    assert code == 0, err
    main_export = tmp_path / "main"
    _export(capsys, main_export, "imagefolder")
    ours = {json.loads(line)["edit_id"]: json.loads(line)
            for line in (main_export / "train" / "metadata.jsonl").read_text().splitlines()}
    kit = out / "ai-toolkit"
    for row in ROWS:
        edit_id = store[row["prompt"]]
        name = f"edit-{edit_id:08d}"
        target = next(p for p in (kit / "target").glob(f"{name}.*") if p.suffix != ".txt")
        assert _sha(target.read_bytes()) == _sha(row["edited"]) == ours[edit_id]["edited_sha256"]
        controls = [next((kit / folder).glob(f"{name}.*")) for folder in ("control", "control_2", "control_3",
                                                                          "control_4")[:1 + len(row["garments"])]]
        assert [_sha(p.read_bytes()) for p in controls] == _controls_of(row)  # all three garments of the first
    header, body = _card(out)
    assert header["dataset_info"][0]["splits"][0]["num_examples"] == 4 and "| snapshot | 4 |" in body
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["edit_id"]) == ids and isinstance(ds[0]["edited_image"], Image.Image)
    raw = ds.cast_column("edited_image", datasets.Image(decode=False))
    assert {r["edit_id"]: _sha(Path(r["edited_image"]["path"]).read_bytes()) for r in raw} == {
        e: ours[e]["edited_sha256"] for e in ids}


def test_recipe_selects_one_recipes_edits_in_every_layout(
        store: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, got, err = _cli(capsys, "export", str(tmp_path / "kit"), "--format", "ai-toolkit", "--recipe", "enrich",
                          "--json")
    assert code == 0 and got["rows"] == 2, err
    assert sorted(p.name for p in (tmp_path / "kit" / "ai-toolkit").iterdir()) == ["enrich", "enrich.yaml"]
    header, body = _card(tmp_path / "kit")
    assert [c["config_name"] for c in header["configs"]] == ["enrich"] and "--recipe enrich" in body
    code, got, err = _cli(capsys, "export", str(tmp_path / "if"), "--recipe", "tryon", "--json")
    assert code == 0 and got["rows"] == 2, err
    lines = [json.loads(line) for line in (tmp_path / "if" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {r["recipe"] for r in lines} == {"tryon"}
    code, _, err = _cli(capsys, "export", str(tmp_path / "none"), "--recipe", "character")
    assert code == 2 and not (tmp_path / "none").exists()
