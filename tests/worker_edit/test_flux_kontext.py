"""The flux-kontext edit backend on tiny random FLUX.1 Kontext weights built offline (CPU, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.models import use_tiny_models
from PIL import Image
from sqlalchemy import select

from common.core.errors import ConfigError
from common.store.rows import Edit, Job
from worker_edit.backends import get_backend
from worker_edit.backends.base import EditItem
from worker_edit.tiny import build_tiny_flux_kontext

# these FLUX-sized tiny models run on one torch thread (several workers share 2 cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2
#: bottom-right 3x3 of the blue channel (0-255) of the edit of ``_image(1, 80, 64)`` with seed 7
#: at 2 steps; a swapped scheduler, a changed guidance or a lost adapter moves these values
EXPECTED_SLICE = np.array([131, 146, 156, 143, 164, 143, 122, 141, 154])


def _image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _item(key: str, image: Image.Image, seed: int, prompt: str = "make it snowy") -> EditItem:
    return EditItem(key=key, image=image, prompt=prompt, seed=seed)


def _px(image: Image.Image | None) -> np.ndarray:
    assert image is not None
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flux_kontext(tmp_path_factory.mktemp("tiny-kontext") / "flux-kontext")


@pytest.fixture(scope="module")
def kontext(kontext_dir: Path):  # -> FluxKontextBackend
    backend = get_backend("flux-kontext", model=str(kontext_dir), steps=STEPS, max_side=128, max_batch=4,
                          max_sequence_length=32)
    backend.load()
    yield backend
    backend.unload()


def test_tiny_checkpoint_is_laid_out_like_the_released_one(kontext_dir: Path) -> None:
    import json

    index = json.loads((kontext_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["text_encoder"][1] == "CLIPTextModel" and index["text_encoder_2"][1] == "T5EncoderModel"
    assert index["tokenizer_2"][1].startswith("T5Tokenizer")
    assert (kontext_dir / "tokenizer_2" / "tokenizer.json").is_file()


def test_pinned_output_slice(kontext) -> None:  # type: ignore[no-untyped-def]
    out = kontext.run_batch([_item("a", _image(1, 80, 64), seed=7)])[0]
    assert out.error is None and out.image is not None
    assert out.image.size == (80, 64)
    got = _px(out.image)[-3:, -3:, 2].flatten()
    assert np.abs(got - EXPECTED_SLICE).max() <= 2, got.tolist()


def test_batch_matches_single_calls_and_seeds_matter(kontext) -> None:  # type: ignore[no-untyped-def]
    img = _image(2, 64, 64)
    items = [_item("a", img, 1), _item("b", img, 2), _item("c", _image(3, 64, 96), 1, "turn the sky red")]
    batch = kontext.run_batch(items)
    assert [o.error for o in batch] == [None, None, None]
    assert batch[2].image is not None and batch[2].image.size == (64, 96)
    single = [kontext.run_batch([it])[0] for it in items[:2]]
    for b, s in zip(batch[:2], single, strict=True):
        assert np.abs(_px(b.image) - _px(s.image)).max() <= 2
    assert np.abs(_px(batch[0].image) - _px(batch[1].image)).mean() > 1.0  # other seed, other noise


def test_bad_item_fails_alone_with_a_code(kontext) -> None:  # type: ignore[no-untyped-def]
    outs = kontext.run_batch([_item("ok", _image(4, 64, 64), 1), _item("bad", _image(5, 64, 64), 1, prompt="  ")])
    assert outs[0].error is None and outs[0].image is not None
    assert outs[1].image is None and outs[1].error_code == "edit.invalid_item"
    assert "prompt is empty" in (outs[1].error or "")


def test_params_record_what_decides_the_output(kontext, kontext_dir: Path) -> None:  # type: ignore[no-untyped-def]
    params = kontext.params()
    assert params["backend"] == "flux-kontext" and params["model"] == str(kontext_dir)
    assert params["steps"] == STEPS and params["guidance_scale"] == 2.5 and params["lora_path"] is None
    assert params["device"] == "cpu" and params["dtype"] == "float32"


def _write_lora(kontext_dir: Path, out: Path) -> Path:
    """A random-weight PEFT LoRA of the tiny transformer in the save_lora_weights layout."""
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(str(kontext_dir / "transformer"))
    torch.manual_seed(3)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    FluxKontextPipeline.save_lora_weights(str(out), transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out


def test_lora_adapter_loads_and_changes_the_edit(kontext, kontext_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lora = _write_lora(kontext_dir, tmp_path / "lora")
    with_lora = get_backend("flux-kontext", model=str(kontext_dir), steps=STEPS, max_side=128,
                            max_sequence_length=32, lora_path=str(lora), lora_scale=1.0)
    item = _item("a", _image(1, 80, 64), seed=7)
    plain, adapted = kontext.run_batch([item])[0], with_lora.run_batch([item])[0]
    assert adapted.error is None
    assert np.abs(_px(plain.image) - _px(adapted.image)).mean() > 0.5
    assert with_lora.params()["lora_path"] == str(lora)
    with pytest.raises(ConfigError, match="pytorch_lora_weights"):
        get_backend("flux-kontext", model=str(kontext_dir), lora_path=str(tmp_path))


def test_enrich_set_is_edited_end_to_end_with_flux_kontext(tiny_models: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ingest a character photo → pair (enrich) → VL → edit with flux-kontext, on the local runner."""
    from common.core.settings import get_settings, reset_settings
    from common.dataset.ingest import ingest
    from common.devkit import samples
    from common.domain.pairing import pair
    from common.runtime.runner import StageContext, run_all
    from common.store.db import get_database
    from common.store.storage import get_storage

    use_tiny_models(monkeypatch, tiny_models)
    monkeypatch.setenv("SYNTHPIPE_EDIT__BACKEND_ENRICH", "flux-kontext")
    monkeypatch.setenv("SYNTHPIPE_PAIRING__ENRICH_VARIATIONS", "3")
    reset_settings()
    ctx = StageContext(settings=get_settings(), db=get_database(), storage=get_storage())
    folders = samples.write_samples(tmp_path / "photos", persons=0, garments=0, characters=1, seed=5)
    assert not ingest(folders["character"], "character", db=ctx.db, storage=ctx.storage,
                      settings=ctx.settings).rejected
    with ctx.db.session() as s:
        pair(s, ctx.settings, "enrich", seed=1)
    results = run_all(ctx, ("vl", "edit"))
    assert results["edit"].by_status == {"succeeded": 3}
    with ctx.db.session() as s:
        edits = list(s.scalars(select(Edit)))
        assert {s.get(Job, e.job_id).payload["recipe"] for e in edits} == {"enrich"}
        assert {e.backend for e in edits} == {"flux-kontext"}
        assert {e.model_id for e in edits} == {str(tiny_models["flux-kontext"])}
        assert len({e.seed for e in edits}) == 3
        assert all(e.params["steps"] == 2 and e.params["max_sequence_length"] == 32 for e in edits)
        for e in edits:
            assert e.width % 16 == 0 and e.height % 16 == 0 and max(e.width, e.height) <= 64
            assert ctx.storage.get(e.output_uri)[:8] == b"\x89PNG\r\n\x1a\n"
