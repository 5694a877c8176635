"""Character LoRA on tiny random FLUX.1 weights: generate → accept → train character → generate with it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import stage_context
from PIL import Image
from sqlalchemy import select

from common.cli import main
from common.store.rows import Adapter, Asset, AssetLineage, Decision, Edit, Job

# these FLUX-sized tiny models run on one torch thread (several workers share 2 cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _pixels(ctx, lineage: AssetLineage) -> np.ndarray:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        uri = s.get(Asset, lineage.asset_id).uri
    return np.asarray(Image.open(io.BytesIO(ctx.storage.get(uri))).convert("RGB"), dtype=np.int16)


def test_character_lora_lowers_its_loss_and_generate_uses_it(tiny_models: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from skimage import data

    from common.core.settings import reset_settings
    from common.dataset.ingest import ingest
    from common.runtime.runner import run_all

    use_tiny_models(monkeypatch, tiny_models)
    for key, value in {"GENERATE__IDENTITY_SCORE": "false", "TRAIN__CHARACTER_STEPS": "80",
                       "TRAIN__CHARACTER_RESOLUTION": "64", "TRAIN__CHARACTER_RANK": "8",
                       "TRAIN__CHARACTER_LR": "0.01", "TRAIN__BATCH_SIZE": "2", "TRAIN__CHECKPOINT_EVERY": "40",
                       "TRAIN__DEVICE": "cpu"}.items():
        monkeypatch.setenv(f"SYNTHPIPE_{key}", value)
    reset_settings()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(photo)
    ctx = stage_context()
    assert ingest(photo, "character", db=ctx.db, storage=ctx.storage, settings=ctx.settings).registered == 1

    # round 1's images of the character (no adapter yet), accepted
    first = _json(capsys, ["generate", "--character", str(photo), "--n", "3", "--seed", "5", "--json"])
    assert first["adapter_id"] is None
    assert run_all(ctx, ("generate",))["generate"].by_status == {"succeeded": 3}
    with ctx.db.session() as s:
        for edit in s.scalars(select(Edit).where(Edit.origin == "generated")):
            s.add(Decision(edit_id=edit.id, decision="accepted", reasons=[], failed={}, thresholds={}))

    queued = _json(capsys, ["train", "character", "--character", str(photo), "--json"])
    assert queued["queued"] and queued["snapshot"]["edits"] == 3 and queued["snapshot"]["generated"] == 3
    assert run_all(ctx, ("train",))["train"].by_status == {"succeeded": 1}
    with ctx.db.session() as s:
        adapter = s.scalars(select(Adapter)).one()
        job = s.scalars(select(Job).where(Job.stage == "train")).one()
        assert adapter.target == "character" and adapter.base_model == str(tiny_models["flux"])
        assert adapter.hyperparameters["trigger"] == "sks"
        assert adapter.hyperparameters["character_asset_id"] == first["character_asset_id"]
        assert adapter.hyperparameters["examples"] == 4  # the photo and its three accepted images
        start, end = job.result["eval_loss_start"], job.result["eval_loss_end"]
        losses = [loss for _, loss in adapter.loss_curve]
        adapter_id = adapter.id
    # the loss on a fixed batch (fixed noise and times) falls, and so does the training curve
    assert end < 0.9 * start, (start, end)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses

    listed = _json(capsys, ["adapters", "list", "--target", "character", "--json"])
    assert [a["id"] for a in listed["adapters"]] == [adapter_id]

    # the same prompts and seeds again, now with the adapter: lineage names it, and it changes the image
    second = _json(capsys, ["generate", "--character", str(photo), "--n", "2", "--seed", "5", "--adapter", "latest",
                            "--json"])
    assert second["adapter_id"] == adapter_id
    assert [j["seed"] for j in second["jobs"]] == [j["seed"] for j in first["jobs"][:2]]
    assert run_all(ctx, ("generate",))["generate"].by_status == {"succeeded": 2}
    with ctx.db.session() as s:
        rows = list(s.scalars(select(AssetLineage).order_by(AssetLineage.id)))
        s.expunge_all()
    plain, adapted = rows[:2], rows[3:]
    assert [r.adapter_id for r in adapted] == [adapter_id, adapter_id]
    # the adapter is named by id and weights hash, never by a local path
    assert all(r.params["generate_adapter_id"] == r.adapter_id and r.params["generate_adapter_sha256"]
               for r in adapted)
    assert plain[0].params["generate_adapter_id"] is None and plain[0].params["generate_adapter_sha256"] is None
    assert not any("adapter_path" in r.params for r in (*plain, *adapted))
    for before, after in zip(plain, adapted, strict=True):
        assert before.seed == after.seed and before.prompt == after.prompt
        assert np.abs(_pixels(ctx, before) - _pixels(ctx, after)).mean() > 0.5

    # a character adapter is a FLUX transformer LoRA: it loads into the Kontext editor too
    from common.domain.adapters import materialize, resolve_adapter
    from worker_edit.backends import get_backend
    from worker_edit.backends.base import EditItem

    with ctx.db.session() as s:
        ref = resolve_adapter(s, "character", str(adapter_id))
    assert ref is not None
    folder = materialize(ref, ctx.storage, ctx.settings.data_dir)
    kontext = get_backend("flux-kontext", model=str(tiny_models["flux-kontext"]), steps=2, max_side=64,
                          max_sequence_length=32, lora_path=str(folder))
    out = kontext.run_batch([EditItem(key="k", image=Image.open(photo), prompt="make it snowy", seed=1)])[0]
    assert out.error is None and out.image is not None and kontext.params()["lora_path"] == str(folder)

    # ... and the edit stage loads it there when told to (enrich set → VL → flux-kontext + adapter)
    from common.domain.pairing import pair

    monkeypatch.setenv("SYNTHPIPE_EDIT__BACKEND_ENRICH", "flux-kontext")
    monkeypatch.setenv("SYNTHPIPE_EDIT__KONTEXT_ADAPTER", "latest")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__ENRICH_VARIATIONS", "1")
    reset_settings()
    ctx = stage_context()
    with ctx.db.session() as s:
        pair(s, ctx.settings, "enrich", limit=1, seed=1)
    assert run_all(ctx, ("vl", "edit"))["edit"].by_status == {"succeeded": 1}
    with ctx.db.session() as s:
        edit = s.scalars(select(Edit).where(Edit.origin == "pipeline")).one()
        assert edit.backend == "flux-kontext" and edit.adapter_id == adapter_id
        # recorded by id and weights hash; the local folder it was read from stays out of the row
        assert edit.params["edit_adapter_id"] == adapter_id and edit.params["edit_adapter_sha256"] == ref.sha256
        assert edit.params["lora_path"] is None


def test_train_character_needs_a_character(tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_models(monkeypatch, tiny_models)
    assert main(["train", "character"]) == 2
    assert "--character ASSET" in capsys.readouterr().err
    assert main(["train", "character", "--character", "42"]) == 2
    assert "no stored photo" in capsys.readouterr().err
