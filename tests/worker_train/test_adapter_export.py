"""`synthpipe adapters export`: a trained adapter written as a folder diffusers' and PEFT's own
loaders open, with its model card, giving what synthpipe's backends give with that adapter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fixtures.models import use_tiny_models
from fixtures.pipeline import make_edits, stage_context
from PIL import Image
from sqlalchemy import select

from common.store.rows import Adapter, Decision, Edit


@pytest.fixture
def tiny(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    use_tiny_models(monkeypatch, tiny_models)
    monkeypatch.setenv("SYNTHPIPE_TRAIN__VL_RESOLUTION", "56")
    return tiny_models


def _accept_all() -> None:
    ctx = stage_context()
    with ctx.db.session() as s:
        for eid in s.scalars(select(Edit.id)):
            s.add(Decision(edit_id=eid, decision="accepted", reasons=[]))


def _train(target: str, **flags: Any) -> Adapter:
    from common.runtime.runner import run_stage
    from worker_train.service import queue_train

    ctx = stage_context()
    with ctx.db.session() as s:
        job_id, _, _ = queue_train(s, ctx.settings, target, resolution=64, **flags)
    assert run_stage("train", ctx).by_status == {"succeeded": 1}
    with ctx.db.session() as s:
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job_id)).one()
        s.expunge(adapter)
        return adapter


def _card(folder: Path) -> tuple[dict[str, Any], str]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def _synthpipe_folder(adapter: Adapter) -> str:
    """The folder the stages load the adapter from (copied out of storage by its hash)."""
    from common.domain.adapters import AdapterRef, materialize

    ctx = stage_context()
    ref = AdapterRef(adapter.id, adapter.target, adapter.sha256, adapter.base_model, adapter.weights_uri,
                     adapter.config_uri)
    return str(materialize(ref, ctx.storage, ctx.settings.data_dir))


def _photo(side: int) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_exported_edit_adapter_loads_in_diffusers_and_edits_as_synthpipe_does(tiny, tmp_path: Path) -> None:
    import diffusers
    import torch

    from common.cli import main
    from common.core.settings import get_settings
    from worker_edit.backends import get_backend
    from worker_edit.backends.base import EditItem
    from worker_edit.backends.instruct_pix2pix import SCHEDULERS
    from worker_edit.service import backend_options

    make_edits(tmp_path, tryon=2)
    _accept_all()
    adapter = _train("edit", steps=6, lr=3e-2)
    out = tmp_path / "exported"
    assert main(["adapters", "export", str(adapter.id), str(out)]) == 0

    weights = out / "pytorch_lora_weights.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == adapter.sha256
    meta, body = _card(out)
    settings = get_settings()
    assert meta["library_name"] == "diffusers" and meta["base_model"] == str(settings.edit_model)
    assert "lora" in meta["tags"] and "synthpipe" in meta["tags"]
    assert adapter.snapshot_sha256 in body and f"| steps | `{adapter.steps}` |" in body
    assert "load_lora_weights" in body and "](loss.png)" in body
    with Image.open(out / "loss.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    assert f"{adapter.loss_curve[-1][1]:.4f}" in body  # the last recorded loss, in the table

    # synthpipe's edit backend with the adapter, as the edit stage loads it
    opts = backend_options("instruct-pix2pix", settings)
    photo, seed, prompt = _photo(64), 7, "make the shirt red"
    ours = get_backend("instruct-pix2pix", **opts, adapter=_synthpipe_folder(adapter))
    made = ours.run_batch([EditItem(key="k", image=photo, prompt=prompt, seed=seed)])[0]
    assert made.error is None and made.image is not None and made.image.size == (64, 64)

    # diffusers alone, with the exported folder
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline.from_pretrained(
        str(settings.edit_model), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[opts["scheduler"]]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def edit() -> np.ndarray:
        result = pipe(prompt=[prompt], image=[photo], negative_prompt=[""], num_inference_steps=opts["steps"],
                      guidance_scale=opts["guidance_scale"], image_guidance_scale=opts["image_guidance_scale"],
                      generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np")
        return np.clip(np.rint(result.images[0] * 255.0), 0, 255).astype(np.int16)

    pipe.load_lora_weights(str(out))
    with_lora = edit()
    pipe.unload_lora_weights()
    without = edit()
    synthpipe = np.asarray(made.image.convert("RGB"), dtype=np.int16)
    same = np.abs(with_lora - synthpipe)
    print(f"exported vs synthpipe: max {same.max()} levels; base vs adapter: mean "
          f"{np.abs(without - synthpipe).mean():.2f}")
    assert same.max() <= 1  # the same image for the same seed
    assert np.abs(without - synthpipe).mean() > 4  # and the adapter is what made it


def test_exported_vl_adapter_loads_in_peft_and_generates_what_synthpipe_does(tiny, tmp_path: Path) -> None:
    import torch
    import transformers
    from peft import PeftModel

    from common.cli import main
    from common.core.settings import get_settings
    from worker_vl.backends import get_backend
    from worker_vl.backends.base import VLItem
    from worker_vl.service import backend_options

    make_edits(tmp_path, tryon=3)
    _accept_all()
    adapter = _train("vl", steps=12, lr=1e-2)
    out = tmp_path / "vl-adapter"
    assert main(["adapters", "export", str(adapter.id), str(out), "--json"]) == 0
    meta, body = _card(out)
    settings = get_settings()
    assert meta["library_name"] == "peft" and meta["base_model"] == str(settings.vl_model)
    assert "PeftModel.from_pretrained(base" in body and adapter.sha256 in body
    assert hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest() == adapter.sha256

    opts = {**backend_options(settings), "max_new_tokens": 12}
    ours = get_backend(settings.vl.backend, **opts, adapter=_synthpipe_folder(adapter))
    item = VLItem(key="k", images=[_photo(56)], system_prompt="", user_prompt="Describe the photo.")
    theirs_base = transformers.AutoModelForImageTextToText.from_pretrained(str(settings.vl_model),
                                                                           dtype=torch.float32)
    theirs = PeftModel.from_pretrained(theirs_base, str(out)).eval()
    plain = transformers.AutoModelForImageTextToText.from_pretrained(str(settings.vl_model),
                                                                     dtype=torch.float32).eval()

    [answer] = ours.run_batch([item])
    assert answer.error is None, answer.error
    enc = ours._encode(0, item)
    inputs = {"input_ids": torch.tensor([enc.input_ids]), "pixel_values": enc.pixel_values,
              "image_grid_thw": enc.image_grid_thw}
    with torch.inference_mode():
        logits = {name: model(**inputs).logits[0, -1] for name, model in
                  (("ours", ours.model), ("theirs", theirs), ("plain", plain))}
        generated = theirs.generate(**inputs, max_new_tokens=12, do_sample=False, temperature=None, top_p=None,
                                    top_k=None, pad_token_id=ours._pad_id, eos_token_id=ours._stop_ids)
    tokens = generated[0, len(enc.input_ids):].tolist()
    cut = next((k for k, t in enumerate(tokens) if t in ours._stop_ids), None)
    tokens = tokens if cut is None else tokens[: cut + 1]
    assert ours.tokenizer.decode(tokens, skip_special_tokens=True) == answer.raw_text  # the same tokens, greedy
    assert len(tokens) == answer.completion_tokens
    assert torch.allclose(logits["ours"], logits["theirs"], atol=1e-5)
    assert (logits["ours"] - logits["plain"]).abs().max() > 1e-3  # the adapter is loaded, not ignored


def test_export_refuses_a_folder_it_did_not_write_and_rewrites_its_own(tiny, tmp_path: Path) -> None:
    from common.cli import main
    from common.dataset.outfolder import MARKER

    make_edits(tmp_path, persons=1, garments=1, tryon=1)
    _accept_all()
    adapter = _train("edit", steps=2, lr=1e-3)
    theirs = tmp_path / "someone-else"
    theirs.mkdir()
    (theirs / "README.md").write_text("my notes")
    assert main(["adapters", "export", str(adapter.id), str(theirs)]) == 2
    assert (theirs / "README.md").read_text() == "my notes" and not (theirs / MARKER).exists()

    ours = tmp_path / "ours"
    assert main(["adapters", "export", str(adapter.id), str(ours)]) == 0
    marker = json.loads((ours / MARKER).read_text())
    assert "README.md" in marker["files"] and marker["adapter_id"] == adapter.id
    assert main(["adapters", "export", str(adapter.id), str(ours)]) == 0  # its own folder: written again
    assert main(["adapters", "export", "999", str(tmp_path / "none")]) == 2  # no such adapter
    assert not (tmp_path / "none").exists()
