"""The train stage on tiny models: snapshots, edit and VL LoRAs, adapters used by the stages,
a train job SIGKILLed mid-way that resumes from its checkpoint, and the CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import make_edits, stage_context
from PIL import Image
from sqlalchemy import select

from common.store import jobs as jobstore
from common.store.rows import Adapter, Analysis, Decision, Edit, Job, Snapshot

TRAIN_FLAGS = {"steps": 30, "lr": 3e-2, "resolution": 64}


def accept_all(reject: int = 0) -> list[int]:
    """AI decisions for every edit (as the score stage writes them): the first ``reject`` rejected."""
    ctx = stage_context()
    with ctx.db.session() as s:
        ids = list(s.scalars(select(Edit.id).order_by(Edit.id)))
        for i, eid in enumerate(ids):
            s.add(Decision(edit_id=eid, decision="rejected" if i < reject else "accepted",
                           reasons=["identity_lost"] if i < reject else []))
    return ids


@pytest.fixture
def tiny(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    use_tiny_models(monkeypatch, tiny_models)
    monkeypatch.setenv("SYNTHPIPE_TRAIN__CHECKPOINT_EVERY", "10")
    monkeypatch.setenv("SYNTHPIPE_TRAIN__VL_RESOLUTION", "56")
    return tiny_models


def _train(target: str, **flags: object) -> Adapter:
    from common.runtime.runner import run_stage
    from worker_train.service import queue_train

    ctx = stage_context()
    with ctx.db.session() as s:
        job_id, _, _ = queue_train(s, ctx.settings, target, **{**TRAIN_FLAGS, **flags})
    assert job_id is not None
    stats = run_stage("train", ctx)
    assert stats.by_status == {"succeeded": 1}, stats
    with ctx.db.session() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        s.expunge(adapter)
        return adapter


def test_snapshot_is_the_accepted_set_without_held_out_sets_and_its_hash_is_stable(tiny, tmp_path: Path) -> None:
    from worker_train.snapshots import freeze

    make_edits(tmp_path)
    ids = accept_all(reject=1)
    ctx = stage_context()
    with ctx.db.session() as s:
        held_out = s.get(Edit, ids[1]).item_set_id
        snap = freeze(s, "edit", exclude_item_sets=[held_out])
        again = freeze(s, "edit", exclude_item_sets=[held_out])
        everything = freeze(s, "edit")
        assert snap.id == again.id and snap.sha256 == again.sha256
        assert snap.edit_ids == ids[2:]  # the rejected one and the held-out one are not in it
        assert everything.edit_ids == ids[1:] and everything.sha256 != snap.sha256
        assert s.scalar(select(Snapshot.size).where(Snapshot.id == snap.id)) == len(ids) - 2


def test_people_overrule_the_ai_in_the_snapshot_and_their_accepted_edits_come_first(tiny, tmp_path: Path) -> None:
    from common.store.rows import Review, Reviewer
    from worker_train.snapshots import freeze

    make_edits(tmp_path)
    ids = accept_all(reject=1)  # the AI rejected ids[0] and accepted the rest
    ctx = stage_context()
    with ctx.db.session() as s:
        person = Reviewer(name="ana", password_hash="not-used-here")
        s.add(person)
        s.flush()
        s.add(Review(reviewer_id=person.id, edit_id=ids[2], decision="rejected", tags=["artifacts"]))
        s.add(Review(reviewer_id=person.id, edit_id=ids[0], decision="accepted"))
    with ctx.db.session() as s:
        snap = freeze(s, "edit")
        assert snap.edit_ids == [ids[0], ids[1], *ids[3:]]  # the person's accept first, their reject left out
        assert snap.selection["human_accepted"] == 1 and snap.selection["ai_accepted"] == len(ids) - 2


def test_edit_lora_lowers_its_loss_and_changes_the_edit_for_the_same_seed(tiny, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_stage

    make_edits(tmp_path)
    accept_all()
    adapter = _train("edit")
    hp = adapter.hyperparameters
    # measured on a fixed batch (same examples, same noise and timesteps) before and after
    assert hp["eval_loss_end"] < hp["eval_loss_start"] * 0.97, hp
    assert len(adapter.loss_curve) == 30 and adapter.steps == 30 and adapter.round is None
    assert hp["device"] == "cpu" and hp["dtype"] == "float32" and hp["optimizer"] == "adamw"
    ctx = stage_context()
    assert ctx.storage.exists(adapter.weights_uri) and ctx.storage.exists(adapter.config_uri)

    monkeypatch.setenv("SYNTHPIPE_EDIT__ADAPTER", "latest")
    reset_settings()
    ctx = stage_context()
    with ctx.db.session() as s:
        analysis = s.scalars(select(Analysis).order_by(Analysis.id)).first()
        base = dict(analysis_id=analysis.id, item_set_id=analysis.item_set_id, recipe="tryon", seed=42)
        jobstore.enqueue(s, "edit", "t:base", {**base, "adapter": "none"})
        jobstore.enqueue(s, "edit", "t:lora", base)  # the setting: latest
        jobstore.enqueue(s, "edit", "t:base-again", {**base, "adapter": "none"})
    assert run_stage("edit", ctx).by_status == {"succeeded": 3}
    with ctx.db.session() as s:
        made = {j.key: e for e, j in s.execute(select(Edit, Job).join(Job, Edit.job_id == Job.id)
                                               .where(Job.key.like("t:%"))).all()}
    assert made["t:base"].adapter_id is None and made["t:lora"].adapter_id == adapter.id
    assert made["t:base"].seed == made["t:lora"].seed == 42
    pixels = {k: np.asarray(Image.open(io.BytesIO(ctx.storage.get(e.output_uri))).convert("RGB"), dtype=np.int16)
              for k, e in made.items()}
    # the seed decides: one batch computes its rows in different kernel blocks, so allow a level
    again = np.abs(pixels["t:base"] - pixels["t:base-again"])
    changed = np.abs(pixels["t:lora"] - pixels["t:base"])
    print(f"same seed, no adapter: max {again.max()} levels; with the adapter: mean {changed.mean():.2f}")
    assert again.max() <= 2
    assert changed.mean() > 4 * max(again.mean(), 0.25)  # the adapter changed it, well beyond that noise
    # the adapter is recorded by id and weights hash, not by the local folder it was read from
    assert made["t:lora"].params["edit_adapter_id"] == adapter.id
    assert made["t:lora"].params["edit_adapter_sha256"] == adapter.sha256
    assert made["t:base"].params["edit_adapter_id"] is None and made["t:base"].params["edit_adapter_sha256"] is None
    assert all("adapter" not in e.params and adapter.sha256 not in json.dumps(e.params.get("lora_path"))
               and str(ctx.settings.data_dir) not in json.dumps(e.params) for e in made.values())


def test_vl_lora_lowers_its_loss_and_analyses_record_it(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_stage

    make_edits(tmp_path, tryon=3)
    accept_all()
    adapter = _train("vl", steps=12, lr=1e-2)
    hp = adapter.hyperparameters
    assert adapter.target == "vl" and hp["examples"] == 3
    assert hp["eval_loss_end"] < hp["eval_loss_start"] * 0.97, hp

    monkeypatch.setenv("SYNTHPIPE_VL__ADAPTER", str(adapter.id))
    reset_settings()
    ctx = stage_context()
    with ctx.db.session() as s:
        item_set_id = s.scalars(select(Analysis.item_set_id)).first()
        jobstore.enqueue(s, "vl", "t:vl-lora", {"item_set_id": item_set_id, "edit_key": "t:edit-after-lora"})
    assert run_stage("vl", ctx).claimed == 1
    with ctx.db.session() as s:
        job = s.scalars(select(Job).where(Job.key == "t:vl-lora")).one()
        analysis = s.scalars(select(Analysis).where(Analysis.job_id == job.id)).first()
        if job.status == "failed":  # a tiny random model may run out of tokens: the job says why, and with what
            assert job.reason and job.reason.startswith("vl.") and job.result["adapter_id"] == adapter.id
        else:  # succeeded, or skipped by the gate: the analysis is stored either way
            assert analysis is not None and analysis.adapter_id == adapter.id
            assert analysis.params["vl_adapter_id"] == adapter.id
            assert analysis.params["vl_adapter_sha256"] == adapter.sha256
            assert str(ctx.settings.data_dir) not in json.dumps(analysis.params)
        if job.status == "succeeded":
            assert s.scalars(select(Job).where(Job.key == "t:edit-after-lora")).one().stage == "edit"
        before = s.scalars(select(Analysis).where(Analysis.adapter_id.is_(None))).all()
        assert before and all(a.adapter_id is None for a in before)


def test_unknown_adapter_is_a_settings_error_naming_the_setting(tiny, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.errors import ConfigError
    from common.core.settings import load_settings
    from common.domain.adapters import resolve_adapter

    with pytest.raises(ConfigError, match="edit.adapter"):
        monkeypatch.setenv("SYNTHPIPE_EDIT__ADAPTER", "newest")
        load_settings()
    monkeypatch.delenv("SYNTHPIPE_EDIT__ADAPTER")
    ctx = stage_context()
    with ctx.db.session() as s:
        with pytest.raises(ConfigError, match="SYNTHPIPE_EDIT__ADAPTER.*no edit adapter"):
            resolve_adapter(s, "edit", "latest")
        with pytest.raises(ConfigError, match="adapter 7 does not exist"):
            resolve_adapter(s, "vl", "7")


def test_sigkilled_train_job_resumes_from_its_last_checkpoint(tiny, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.runtime.runner import run_stage
    from worker_train.checkpoints import latest
    from worker_train.service import checkpoint_dir_for, queue_train

    monkeypatch.setenv("SYNTHPIPE_JOBS__LEASE_S", "3")
    reset_settings()
    make_edits(tmp_path, tryon=3)
    accept_all()
    ctx = stage_context()
    with ctx.db.session() as s:
        job_id, key, _ = queue_train(s, ctx.settings, "edit", **{**TRAIN_FLAGS, "steps": 60})
    folder = checkpoint_dir_for(ctx.settings, key) / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "run", "--stage", "train"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and latest(folder) is None:
        assert proc.poll() is None, "the train run ended before it was killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = latest(folder)
    assert saved is not None and 10 <= saved.step < 60
    with ctx.db.session() as s:
        assert s.get(Job, job_id).status == "running"  # the killed worker still holds it
    time.sleep(3.5)  # its lease runs out; the next run puts the job back and resumes it
    assert run_stage("train", ctx).by_status == {"succeeded": 1}
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        assert job.attempts == 2 and job.result["resumed_from"] == adapter.hyperparameters["resumed_from"]
        assert adapter.hyperparameters["resumed_from"] >= saved.step
        assert len(adapter.loss_curve) == 60
        assert adapter.loss_curve[: saved.step] == saved.state["loss_curve"]  # the steps before the kill
    assert not folder.exists()  # checkpoints go once the adapter is stored


def test_cli_train_and_adapters_list(tiny, tmp_path: Path) -> None:
    from common.cli import main
    from common.runtime.runner import run_stage

    out = subprocess.run([sys.executable, "-m", "common.cli", "train", "edit", "--json"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no accepted edits" in out.stderr  # an empty database: nothing to train on
    make_edits(tmp_path, tryon=2)
    accept_all()
    run = subprocess.run([sys.executable, "-m", "common.cli", "train", "edit", "--steps", "3", "--rank", "2",
                          "--resolution", "64", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    queued = json.loads(run.stdout)
    assert queued["queued"] and queued["snapshot"]["edits"] == 2 and queued["snapshot"]["ai_accepted"] == 2
    again = subprocess.run([sys.executable, "-m", "common.cli", "train", "edit", "--steps", "3", "--rank", "2",
                            "--resolution", "64", "--json"], capture_output=True, text=True)
    assert json.loads(again.stdout)["queued"] is False  # same snapshot, same flags: the same job
    assert run_stage("train", stage_context()).by_status == {"succeeded": 1}
    listed = subprocess.run([sys.executable, "-m", "common.cli", "adapters", "list", "--json"], capture_output=True,
                            text=True)
    rows = json.loads(listed.stdout)["adapters"]
    assert len(rows) == 1 and rows[0]["hyperparameters"]["rank"] == 2 and rows[0]["steps"] == 3
    assert rows[0]["snapshot_sha256"] == queued["snapshot"]["sha256"] and rows[0]["target"] == "edit"
    assert main(["adapters", "list"]) == 0


def test_export_snapshot_writes_what_the_job_trained_on_in_both_layouts(tiny, tmp_path: Path) -> None:
    import datasets

    from common.cli import main
    from worker_train.snapshots import freeze

    make_edits(tmp_path, tryon=3)
    ids = accept_all(reject=1)
    ctx = stage_context()
    with ctx.db.session() as s:
        snap = freeze(s, "edit")
        snap_id = snap.id
        prompts = {e: s.get(Analysis, s.get(Edit, e).analysis_id).edit_prompt for e in snap.edit_ids}
    out = tmp_path / "snap"
    assert main(["export", str(out), "--snapshot", str(snap_id)]) == 0
    ds = datasets.load_dataset(str(out / "imagefolder"), split="train")
    assert ds["edit_id"] == ids[1:] and ds["edit_prompt"] == [prompts[e] for e in ids[1:]]
    assert {"input_image", "edited_image"} <= set(ds.column_names)
    kit = out / "ai-toolkit"
    names = sorted(p.stem for p in (kit / "target").glob("*.png"))
    assert len(names) == 2 and names == sorted(p.stem for p in (kit / "control").glob("*"))
    assert [(kit / "target" / f"{n}.txt").read_text().strip() for n in names] == [prompts[e] for e in ids[1:]]
    assert sorted(p.stem for p in (kit / "control_2").glob("*")) == names  # the garment photos
    assert json.loads((out / "snapshot.json").read_text())["edit_ids"] == ids[1:]
    assert main(["export", str(out), "--snapshot", str(snap_id)]) == 0  # its own folder: written again
    assert main(["export", str(out), "--snapshot", "999"]) == 2


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_checkpoint_keeps_the_optimizer_state_without_pickle(tmp_path: Path, optimizer: str) -> None:
    import torch

    from worker_train import checkpoints
    from worker_train.trainers.loop import Hyper, Runtime, make_optimizer

    def fresh() -> tuple[torch.nn.Parameter, object]:
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(64, 64))
        hp = Hyper(rank=1, lr=1e-2, steps=1)
        return param, make_optimizer([param], hp, Runtime("cpu", torch.float32, optimizer))

    def step(param: torch.nn.Parameter, opt: object, k: int) -> None:
        torch.manual_seed(100 + k)
        param.grad = torch.randn(64, 64)
        opt.step()  # type: ignore[attr-defined]

    straight, opt = fresh()
    for k in range(4):
        step(straight, opt, k)
    resumed, opt2 = fresh()
    for k in range(2):
        step(resumed, opt2, k)
    checkpoints.save(tmp_path, 2, {"w": resumed.data}, opt2.state_dict(), {"loss_curve": []})  # type: ignore[attr-defined]
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))
    ckpt = checkpoints.latest(tmp_path)
    assert ckpt is not None and ckpt.step == 2
    again, opt3 = fresh()
    again.data.copy_(ckpt.weights["w"])
    opt3.load_state_dict(ckpt.optimizer)  # type: ignore[attr-defined]
    for k in range(2, 4):
        step(again, opt3, k)
    assert torch.allclose(again.data, straight.data, atol=1e-6)  # as if it had never stopped
