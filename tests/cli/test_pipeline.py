"""The whole local pipeline on tiny models: ingest → pair → VL → edit → export, both recipes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import ingest_and_pair, stage_context
from PIL import Image
from sqlalchemy import select

from common.core.errors import InputError
from common.store.rows import Edit, Job

EXPECTED_COLUMNS = {"input_image", "edit_prompt", "edited_image", "garment_images", "analysis", "confidence",
                    "feasibility", "source_urls", "sites", "categories", "vl_model", "edit_model", "seed",
                    "edit_params", "recipe", "page_urls", "licences", "found_via"}


@pytest.fixture
def tiny(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    use_tiny_models(monkeypatch, tiny_models)
    return tiny_models


def test_five_characters_give_twenty_five_edits_and_the_export_loads(tiny: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    from common.dataset.export import export
    from common.runtime.runner import run_all

    ingest_and_pair(tmp_path, persons=2, garments=3, characters=5, tryon=2)
    ctx = stage_context()
    results = run_all(ctx)
    assert results["vl"].by_status == {"succeeded": 27}
    assert results["edit"].by_status == {"succeeded": 27}
    with ctx.db.session() as s:
        edits = s.scalars(select(Edit)).all()
        enrich = [e for e in edits if e.item_set_id and s.get(Job, e.job_id).payload["recipe"] == "enrich"]
        assert len(enrich) == 25
        for e in edits:
            assert e.backend == "instruct-pix2pix" and e.params["steps"] == 2 and e.seed > 0
            assert e.model_id == str(tiny["edit"]) and e.timings["seconds"] >= 0
            assert ctx.storage.exists(e.output_uri)

    out = tmp_path / "dataset"
    report = export(ctx.db, ctx.storage, out, decision="all")  # every edit, whatever its scores decided
    assert report.rows == 27 and sum(report.by_decision.values()) == 27
    ds = datasets.load_dataset(str(out), split="train")
    assert set(ds.column_names) >= EXPECTED_COLUMNS
    row = ds[0]
    assert isinstance(row["input_image"], Image.Image) and isinstance(row["edited_image"], Image.Image)
    assert row["edit_prompt"] and json.loads(row["analysis"])["edit_prompt"] == row["edit_prompt"]
    recipes = [r for r in ds["recipe"]]
    assert recipes.count("enrich") == 25 and recipes.count("tryon") == 2
    tryon_rows = [r for r in ds if r["recipe"] == "tryon"]
    assert all(1 <= len(r["garment_images"]) <= 3 for r in tryon_rows)

    parquet = tmp_path / "parquet"
    export(ctx.db, ctx.storage, parquet, fmt="parquet", decision="all")
    pq = datasets.load_dataset("parquet", data_dir=str(parquet), split="train")
    assert pq.num_rows == 27 and isinstance(pq[0]["edited_image"], Image.Image)
    assert pq[0]["edited_image"].tobytes() == ds[0]["edited_image"].tobytes()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs"]["edit"]["succeeded"] == 27
    assert summary["acceptance"]["by_recipe"]["enrich"]["edited"] == 25
    assert summary["exported_rows"] == 27

    top = max(ds["confidence"])  # keeps at least the most confident, drops any below it
    filtered = export(ctx.db, ctx.storage, tmp_path / "strict", decision="all", min_confidence=top)
    assert filtered.rows == sum(c >= top for c in ds["confidence"]) >= 1
    assert filtered.rows + filtered.filtered == 27


def test_same_job_and_seed_give_the_same_image(tiny: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_all
    from common.store.db import reset_databases

    outputs = []
    for name in ("first", "second"):
        monkeypatch.setenv("SYNTHPIPE_DATA_DIR", str(tmp_path / name))
        reset_settings()
        reset_databases()
        ingest_and_pair(tmp_path / name, persons=2, garments=2, characters=0, tryon=2)
        run_all(stage_context())
        with stage_context().db.session() as s:
            outputs.append({s.get(Job, e.job_id).key: (e.seed, e.output_sha256) for e in s.scalars(select(Edit))})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2
    assert len({sha for _, sha in outputs[0].values()}) == 2


def test_multi_image_editor_for_tryon_by_setting(tiny: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_all

    monkeypatch.setenv("SYNTHPIPE_EDIT__BACKEND_TRYON", "qwen-image-edit-plus")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__MAX_GARMENTS", "2")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__ENRICH_VARIATIONS", "1")
    reset_settings()
    ingest_and_pair(tmp_path, persons=1, garments=2, characters=1, tryon=1)
    results = run_all(stage_context())
    assert results["edit"].by_status == {"succeeded": 2}
    with stage_context().db.session() as s:
        by_recipe = {s.get(Job, e.job_id).payload["recipe"]: e for e in s.scalars(select(Edit))}
    assert by_recipe["tryon"].backend == "qwen-image-edit-plus"
    assert by_recipe["tryon"].model_id == str(tiny["edit-plus"])
    assert by_recipe["enrich"].backend == "instruct-pix2pix"


def test_contact_sheet_renders_in_headless_chromium(tiny: dict[str, Path], tmp_path: Path) -> None:
    from common.dataset.export import export
    from common.runtime.runner import run_all

    ingest_and_pair(tmp_path, persons=2, garments=2, characters=0, tryon=2)
    ctx = stage_context()
    run_all(ctx)
    report = export(ctx.db, ctx.storage, tmp_path / "out", decision="all")
    shot = tmp_path / "sheet.png"
    subprocess.run(
        ["/usr/bin/chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700", f"--screenshot={shot}",
         report.contact_sheet.as_uri()], check=True, capture_output=True, timeout=60)
    im = Image.open(shot).convert("RGB")
    assert im.size == (1000, 700)
    html = report.contact_sheet.read_text()
    assert html.count('alt="before"') == 2 and html.count('alt="after"') == 2 and "data:image/jpeg;base64," in html
    # the inlined thumbnails were drawn: the page is not a blank sheet of one colour
    colours = im.resize((100, 70)).getcolors(maxcolors=100_000) or []
    assert len(colours) > 200


def test_black_output_is_a_recorded_failure_not_a_dataset_row(tiny: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from common.core.settings import reset_settings
    from common.dataset.export import export
    from common.dataset.summary import summarise
    from common.runtime.runner import run_all

    # a saved checkpoint whose VAE decoder ends in a constant -10: every image decodes black
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(tiny["edit"]), safety_checker=None)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-10.0)
    broken = tmp_path / "black-edit-model"
    pipe.save_pretrained(broken)
    monkeypatch.setenv("SYNTHPIPE_EDIT_MODEL", str(broken))
    reset_settings()
    ingest_and_pair(tmp_path, persons=2, garments=2, characters=0, tryon=2)
    ctx = stage_context()
    results = run_all(ctx)
    assert results["edit"].by_status == {"failed": 2}
    with ctx.db.session() as s:
        failed = s.scalars(select(Job).where(Job.stage == "edit")).all()
        assert {(j.error_type, j.reason, j.error_message) for j in failed} == {
            ("model_output", "edit.black_output", "all-black output")}
        assert s.scalars(select(Edit)).all() == []
    with pytest.raises(InputError, match="no edits to export") as refused:  # nothing to write: nothing written
        export(ctx.db, ctx.storage, tmp_path / "out", decision="all")
    assert refused.value.code == "export.empty" and not (tmp_path / "out").exists()
    assert summarise(ctx.db)["failures"] == [{"stage": "edit", "error_type": "model_output",
                                              "reason": "edit.black_output", "count": 2,
                                              "example": "all-black output"}]


def test_demo_command_runs_end_to_end_on_its_own_defaults_and_reruns_cleanly(tmp_path: Path) -> None:
    """`synthpipe demo`, the README's first command, through the CLI: a synthpipe.toml in the
    working directory naming another database, storage and broker must not pull it elsewhere."""
    import os
    import sys

    work = tmp_path / "cwd"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (work / "synthpipe.toml").write_text(
        f'database_url = "sqlite:///{elsewhere}/other.db"\nstorage_url = "{elsewhere.as_uri()}/objects"\n'
        'broker_url = "redis://127.0.0.1:1/0"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_")}

    def demo() -> dict:  # type: ignore[type-arg]
        out = subprocess.run([sys.executable, "-m", "common.cli", "demo", "--dir", str(tmp_path / "demo"),
                              "--persons", "1", "--garments", "2", "--characters", "1", "--json"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    first = demo()
    assert first["jobs"]["vl"].get("running", 0) == 0 and first["jobs"]["edit"].get("running", 0) == 0
    assert first["rows"] == first["jobs"]["edit"].get("succeeded", 0) >= 1
    # the demo scores its edits and says how they were decided
    assert first["jobs"]["score"]["succeeded"] == first["rows"]
    assert sum(first["decisions"].values()) == first["rows"] and "unscored" not in first["decisions"]
    assert first["notes"][0] == (f"scored {first['rows']} of {first['rows']} edits: "
                                 f"{first['decisions'].get('accepted', 0)} accepted, "
                                 f"{first['decisions'].get('rejected', 0)} rejected")
    assert any("random weights" in line for line in first["notes"])
    dataset = Path(first["dataset"])
    assert (dataset / "train" / "metadata.jsonl").is_file() and Path(first["contact_sheet"]).is_file()
    assert len((dataset / "train" / "metadata.jsonl").read_text().splitlines()) == first["rows"]
    assert not elsewhere.exists(), "the demo used the toml's database or storage"
    second = demo()  # a rerun adds nothing and loses nothing
    assert second["rows"] == first["rows"] and second["jobs"] == first["jobs"]


def test_models_tiny_prints_settings_that_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from common.core.settings import load_settings

    out = subprocess.run([sys.executable, "-m", "common.cli", "models", "tiny", str(tmp_path / "m"), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    from common.devkit.tinymodels import TINY_MODELS

    assert set(got["paths"]) == {t.name for t in TINY_MODELS}  # every backend's checkpoint, FLUX ones too
    assert all((Path(p) / "model_index.json").is_file() or (Path(p) / "config.json").is_file()
               for p in got["paths"].values())
    assert {t.setting: got["paths"][t.name] for t in TINY_MODELS}.items() <= got["settings"].items()
    for key, value in {**got["settings"], **got["multi_image_settings"]}.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.vl_model == got["paths"]["vl"] and s.edit.backend_tryon == "qwen-image-edit-plus"
