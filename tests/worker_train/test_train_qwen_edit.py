"""LoRA of the Qwen-Image-Edit Plus transformer on tiny random weights: try-on edits made by the
Plus backend -> accepted -> `train edit-plus` (flow matching) -> the edit stage with the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import stage_context
from sqlalchemy import select

from common.devkit import samples
from common.store import jobs as jobstore
from common.store.rows import Adapter, Analysis, Decision, Edit, Job

# these FLUX-sized tiny models run on one torch thread (several workers share 2 cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_edit_plus_lora_lowers_its_loss_and_changes_the_plus_edit_for_the_same_seed(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.dataset.ingest import ingest
    from common.devkit.tinymodels import multi_image_settings
    from common.domain.pairing import pair
    from common.runtime.runner import run_all, run_stage
    from worker_train.service import queue_train

    use_tiny_models(monkeypatch, tiny_models)
    for key, value in {**multi_image_settings(), "SYNTHPIPE_TRAIN__CHECKPOINT_EVERY": "10",
                       "SYNTHPIPE_TRAIN__DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    ctx = stage_context()
    for role, folder in samples.write_samples(tmp_path / "photos", persons=2, garments=3, seed=3).items():
        ingest(folder, role, db=ctx.db, storage=ctx.storage, settings=ctx.settings)
    with ctx.db.session() as s:
        pair(s, ctx.settings, "tryon", limit=3, seed=1)
    run_all(ctx, ["vl", "edit"])
    with ctx.db.session() as s:
        edits = list(s.scalars(select(Edit).order_by(Edit.id)))
        assert edits and {e.backend for e in edits} == {"qwen-image-edit-plus"}
        for e in edits:
            s.add(Decision(edit_id=e.id, decision="accepted", reasons=[]))

    with ctx.db.session() as s:
        job_id, _, snap = queue_train(s, ctx.settings, "edit-plus", steps=20, lr=3e-2, resolution=64)
        assert job_id is not None and snap.size == len(edits)
    assert run_stage("train", ctx).by_status == {"succeeded": 1}
    with ctx.db.session() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        s.expunge(adapter)
    hp = adapter.hyperparameters
    # measured on a fixed batch (same examples, same noise and times) before and after training
    assert hp["eval_loss_end"] < hp["eval_loss_start"] * 0.9, hp
    assert adapter.target == "edit-plus" and adapter.base_model == str(tiny_models["edit-plus"])
    assert adapter.steps == 20 and len(adapter.loss_curve) == 20 and hp["examples"] == len(edits)
    assert hp["device"] == "cpu" and hp["dtype"] == "float32" and hp["optimizer"] == "adamw"
    assert hp["vae_image_area"] == 128 * 128 and hp["condition_image_area"] == 112 * 112

    def edit_with(plus_adapter: str, key: str) -> Edit:
        monkeypatch.setenv("SYNTHPIPE_EDIT__PLUS_ADAPTER", plus_adapter)
        reset_settings()
        c = stage_context()
        with c.db.session() as s:
            analysis = s.scalars(select(Analysis).order_by(Analysis.id)).first()
            jobstore.enqueue(s, "edit", key, {"analysis_id": analysis.id, "item_set_id": analysis.item_set_id,
                                              "recipe": "tryon", "seed": 42})
        assert run_stage("edit", c).by_status == {"succeeded": 1}
        with c.db.session() as s:
            edit = s.scalars(select(Edit).join(Job, Edit.job_id == Job.id).where(Job.key == key)).one()
            s.expunge(edit)
            return edit

    base, lora, again = edit_with("none", "t:base"), edit_with("latest", "t:lora"), edit_with("none", "t:again")
    assert base.adapter_id is None and again.adapter_id is None and lora.adapter_id == adapter.id
    assert base.seed == lora.seed == again.seed == 42
    assert base.output_sha256 == again.output_sha256  # the seed decides the base model's image
    assert lora.output_sha256 != base.output_sha256  # the adapter changed it
    assert lora.params["edit_adapter_id"] == adapter.id and lora.params["edit_adapter_sha256"] == adapter.sha256
    assert base.params["edit_adapter_id"] is None and "adapter" not in lora.params
