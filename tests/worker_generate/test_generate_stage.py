"""The generate stage on tiny random FLUX.1 weights: CLI → jobs → assets with lineage → identity scores."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import stage_context
from PIL import Image
from sqlalchemy import select

from common.cli import main
from common.store.rows import Asset, AssetLineage, Edit, Job, Score

# these FLUX-sized tiny models run on one torch thread (several workers share 2 cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _ingest_astronaut(tmp: Path) -> tuple[int, Path]:
    """A real face photo (scikit-image's astronaut, public domain) as a character asset."""
    from skimage import data

    from common.dataset.ingest import ingest

    path = tmp / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((256, 256)).save(path)
    ctx = stage_context()
    assert ingest(path, "character", db=ctx.db, storage=ctx.storage, settings=ctx.settings).registered == 1
    with ctx.db.session() as s:
        return int(s.scalar(select(Asset.id).where(Asset.role == "character"))), path


@pytest.fixture
def tiny(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    use_tiny_models(monkeypatch, tiny_models)
    return tiny_models


def test_generate_makes_character_assets_with_lineage_and_identity_scores(
        tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.runtime.runner import run_all

    asset_id, path = _ingest_astronaut(tmp_path)
    got = _json(capsys, ["generate", "--character", str(asset_id), "--n", "3", "--seed", "5", "--json"])
    assert got["queued"] == 3 and got["adapter_id"] is None and got["trigger"] == "sks"
    prompts = [j["prompt"] for j in got["jobs"]]
    assert all(p.startswith("a photo of sks person, ") for p in prompts) and len(set(prompts)) > 1
    # the same command queues nothing new; the sha256 and the source path name the same photo
    with stage_context().db.session() as s:
        sha = s.get(Asset, asset_id).sha256
    again = _json(capsys, ["generate", "--character", sha, "--n", "3", "--seed", "5", "--json"])
    assert again["queued"] == 0 and again["existing"] == 3 and [j["prompt"] for j in again["jobs"]] == prompts
    assert _json(capsys, ["generate", "--character", str(path), "--n", "3", "--seed", "5",
                          "--json"])["character_asset_id"] == asset_id

    results = run_all(stage_context(), ("generate", "score"))
    assert results["generate"].by_status == {"succeeded": 3}
    assert results["score"].by_status == {"succeeded": 3}
    ctx = stage_context()
    with ctx.db.session() as s:
        lineage = list(s.scalars(select(AssetLineage).order_by(AssetLineage.id)))
        assert len(lineage) == 3
        for row in lineage:
            asset, edit, job = s.get(Asset, row.asset_id), s.get(Edit, row.edit_id), s.get(Job, row.job_id)
            assert asset.role == "character" and asset.width == 64 and asset.height == 64
            assert row.provenance == "generated" and row.source_asset_id == asset_id and row.adapter_id is None
            assert row.prompt == job.payload["prompt"] and row.seed == job.payload["seed"]
            assert row.params["model"] == str(tiny["flux"]) and row.params["steps"] == 2
            assert row.params["keywords"].keys() == {"setting", "lighting", "style", "season"}
            assert edit.origin == "generated" and edit.edit_prompt is None and edit.output_sha256 == asset.sha256
            Image.open(io.BytesIO(ctx.storage.get(asset.uri))).verify()
            score = s.scalars(select(Score).where(Score.edit_id == edit.id)).one()
            assert score.scorer == "identity"
            # the source is a real face; random tiny FLUX weights draw none, and the scorer says so
            assert score.metrics["faces_input"] == 1.0 and score.metrics["faces_edited"] == 0.0
        assert len({r.seed for r in lineage}) == 3


@pytest.mark.parametrize("batch_size", [1, 2])
def test_same_prompt_and_seed_is_a_duplicate_and_is_skipped(batch_size: int, tiny: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_all
    from common.store import jobs as jobstore

    monkeypatch.setenv("SYNTHPIPE_GENERATE__IDENTITY_SCORE", "false")
    monkeypatch.setenv("SYNTHPIPE_GENERATE__BATCH_SIZE", str(batch_size))
    reset_settings()
    asset_id, _ = _ingest_astronaut(tmp_path)
    got = _json(capsys, ["generate", "--character", str(asset_id), "--n", "1", "--seed", "9", "--json"])
    ctx = stage_context()
    with ctx.db.session() as s:
        first = s.get(Job, got["jobs"][0]["job_id"])
        jobstore.enqueue(s, "generate", first.key + ":again", dict(first.payload), item_set_id=first.item_set_id)
    results = run_all(ctx, ("generate",))
    assert results["generate"].by_status == {"succeeded": 1, "skipped": 1}
    with ctx.db.session() as s:
        skipped = s.scalars(select(Job).where(Job.status == "skipped")).one()
        assert skipped.reason == "generate.duplicate"
        made = s.scalars(select(Job).where(Job.status == "succeeded")).one()
        if batch_size == 1:  # recorded before the repeat ran: the repeat names the stored asset
            assert s.scalar(select(Asset.id).where(Asset.role == "character", Asset.id != asset_id)) == \
                skipped.result["duplicate_of"]
        else:  # in the same batch: it names the job that made it
            assert skipped.result["duplicate_of_job"] == made.id
        assert len(list(s.scalars(select(AssetLineage)))) == 1
        assert not list(s.scalars(select(Job).where(Job.stage == "score")))


def test_bad_characters_and_adapters_are_one_line_errors(tiny: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from common.dataset.ingest import ingest

    asset_id, _ = _ingest_astronaut(tmp_path)
    garment = tmp_path / "garment.png"
    Image.new("RGB", (96, 96), (200, 30, 30)).save(garment)
    ctx = stage_context()
    ingest(garment, "garment", db=ctx.db, storage=ctx.storage, settings=ctx.settings)
    capsys.readouterr()
    assert main(["generate", "--character", str(garment), "--n", "1"]) == 2
    assert "not a character photo" in capsys.readouterr().err
    assert main(["generate", "--character", "999", "--n", "1"]) == 2
    assert "no stored photo" in capsys.readouterr().err
    assert main(["generate", "--character", str(asset_id), "--n", "1", "--adapter", "77"]) == 2
    assert "adapter 77 does not exist" in capsys.readouterr().err


def test_generate_on_postgres_records_lineage_once(tiny: dict[str, Path], tmp_path: Path, pg_url: str,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Distributed mode's database: the same jobs, assets and lineage rows, and a rerun adds none."""
    from common.core.settings import reset_settings
    from common.runtime.runner import run_all
    from common.store.db import get_database

    monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", pg_url)
    monkeypatch.setenv("SYNTHPIPE_GENERATE__IDENTITY_SCORE", "false")
    reset_settings()
    get_database(pg_url, ensure=False).upgrade()
    asset_id, _ = _ingest_astronaut(tmp_path)
    got = _json(capsys, ["generate", "--character", str(asset_id), "--n", "2", "--seed", "3", "--json"])
    assert got["queued"] == 2
    assert run_all(stage_context(), ("generate",))["generate"].by_status == {"succeeded": 2}
    assert _json(capsys, ["generate", "--character", str(asset_id), "--n", "2", "--seed", "3", "--json"])["queued"] == 0
    assert run_all(stage_context(), ("generate",))["generate"].claimed == 0
    with stage_context().db.session() as s:
        rows = list(s.scalars(select(AssetLineage)))
        assert len(rows) == 2 and {r.source_asset_id for r in rows} == {asset_id}
        assert {s.get(Edit, r.edit_id).origin for r in rows} == {"generated"}
