"""Edit backends on tiny random-weight checkpoints built offline (no mocks, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from common.core.errors import ConfigError  # noqa: E402
from worker_edit.backends import EDIT_BACKENDS as BACKENDS
from worker_edit.backends import MIN_STEPS, SCHEDULERS, get_backend  # noqa: E402
from worker_edit.backends.base import (  # noqa: E402
    ERROR_BLACK,
    ERROR_NAN,
    EditBackend,
    EditItem,
    check_output_array,
    fit_resolution,
)
from worker_edit.tiny import build_tiny_instruct_pix2pix, build_tiny_qwen_image_edit_plus  # noqa: E402

P2P_STEPS = 3


def _image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _item(key: str, image: Image.Image, seed: int, prompt: str = "make it snowy",
          garments: list[Image.Image] | None = None, negative: str | None = None) -> EditItem:
    return EditItem(key=key, image=image, garments=garments or [], prompt=prompt,
                    negative_prompt=negative, seed=seed)


def _px(image: Image.Image | None) -> np.ndarray:
    assert image is not None
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: thread start-up costs more than it saves, and on a busy 2-core machine
    two spinning OpenMP threads per process made this file 4x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-edit")
    return {
        "p2p": build_tiny_instruct_pix2pix(root / "edit"),
        "plus": build_tiny_qwen_image_edit_plus(root / "edit-plus"),
    }


@pytest.fixture(scope="module")
def p2p(tiny_dirs: dict[str, Path]):  # -> InstructPix2PixBackend
    backend = get_backend("instruct-pix2pix", model=str(tiny_dirs["p2p"]), steps=P2P_STEPS,
                         max_side=128, max_batch=4)
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def plus(tiny_dirs: dict[str, Path]):  # -> QwenImageEditPlusBackend
    backend = get_backend("qwen-image-edit-plus", model=str(tiny_dirs["plus"]), steps=2, max_side=128,
                          vae_image_area=128 * 128, condition_image_area=112 * 112)
    backend.load()
    yield backend
    backend.unload()


# ----------------------------------------------------------------------------- pure helpers


def test_resolution_policy() -> None:
    assert fit_resolution(1024, 768, 512) == (512, 384)
    assert fit_resolution(768, 1024, 512) == (384, 512)
    assert fit_resolution(100, 50, 512) == (104, 48)  # no upscaling; 12.5 rounds up
    assert fit_resolution(64, 64, 512) == (64, 64)
    assert fit_resolution(3, 5, 512) == (8, 8)  # at least one multiple
    assert fit_resolution(4000, 10, 512) == (512, 8)
    assert fit_resolution(300, 200, 128, 16) == (128, 80)
    for width in range(9, 2000, 97):
        for height in range(9, 2000, 89):
            w, h = fit_resolution(width, height, 512)
            assert w % 8 == 0 and h % 8 == 0
            assert 8 <= w <= 512 and 8 <= h <= 512
            assert w <= max(8, width + 4) and h <= max(8, height + 4)  # never upscaled
            if min(w, h) >= 64:  # aspect kept within rounding
                assert abs(w / h - width / height) / (width / height) < 0.15
    with pytest.raises(ValueError):
        fit_resolution(0, 10, 512)
    with pytest.raises(ConfigError):
        fit_resolution(10, 10, 4)


def test_check_output_array() -> None:
    ok = np.full((8, 8, 3), 1 / 255, dtype=np.float32)
    assert check_output_array(ok) is None
    assert check_output_array(np.zeros((8, 8, 3), np.float32)) == ERROR_BLACK
    nan = ok.copy()
    nan[3, 3, 1] = np.nan
    assert check_output_array(nan) == ERROR_NAN


def test_registry() -> None:
    assert set(BACKENDS) == {"instruct-pix2pix", "qwen-image-edit-plus", "flux-kontext"}
    with pytest.raises(ConfigError, match="allowed"):
        get_backend("no-such-editor")
    with pytest.raises(ConfigError, match="scheduler"):
        get_backend("instruct-pix2pix", scheduler="lms")


def test_load_failures_are_settings_errors_naming_the_fix(tmp_path) -> None:
    import requests

    from common.core.errors import model_load_error

    missing = get_backend("instruct-pix2pix", model=str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(ConfigError, match="could not be loaded"):
        missing.load()
    try:  # how huggingface_hub reports an outage: an OSError raised while handling the network error
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/models/x")
        except requests.exceptions.ConnectionError as net:
            raise OSError("We couldn't connect to the hub to load this model") from net
    except OSError as exc:  # unreachable and not cached: retrying cannot find it
        offline = model_load_error("x", exc, "edit_model (SYNTHPIPE_EDIT_MODEL)")
        assert isinstance(offline, ConfigError) and offline.code == "model.not_found"
        assert "hub is unreachable" in str(offline) and "SYNTHPIPE_EDIT_MODEL" in str(offline)
    error = model_load_error("x", ValueError("not a pipeline"))
    assert isinstance(error, ConfigError) and "models tiny" in str(error) and "not a pipeline" in str(error)


def test_a_lora_that_does_not_fit_is_a_settings_error(tiny_dirs, tmp_path) -> None:
    (tmp_path / "not-a-lora").mkdir()
    for name, key in (("instruct-pix2pix", "p2p"), ("qwen-image-edit-plus", "plus")):
        backend = get_backend(name, model=str(tiny_dirs[key]), adapter=str(tmp_path / "not-a-lora"))
        with pytest.raises(ConfigError, match="does not fit") as caught:
            backend.load()
        assert caught.value.code == "model.adapter_mismatch" and backend.pipe is None


# ----------------------------------------------------------------------------- InstructPix2Pix


def test_p2p_loads_once_and_reports_params(p2p, tiny_dirs) -> None:
    backend: object = p2p
    assert isinstance(backend, EditBackend)
    pipe = p2p.pipe
    p2p.load()
    assert p2p.pipe is pipe
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.tokenizer.model_max_length == 77
    params = p2p.params()
    assert params["model"] == str(tiny_dirs["p2p"])
    assert (params["steps"], params["scheduler"], params["max_side"]) == (P2P_STEPS, "euler_ancestral", 128)
    assert (params["device"], params["dtype"]) == ("cpu", "float32")
    json.dumps(params)  # provenance must serialise


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_setting_loads_and_edits(scheduler: str, tiny_dirs) -> None:
    backend = get_backend("instruct-pix2pix", model=str(tiny_dirs["p2p"]), steps=MIN_STEPS.get(scheduler, 2),
                          max_side=64, scheduler=scheduler)
    backend.load()
    try:
        assert type(backend.pipe.scheduler).__name__ == SCHEDULERS[scheduler]
        (out,) = backend.run_batch([_item("a", _image(1, 64, 64), seed=3)])
    finally:
        backend.unload()
    assert out.error is None and out.image is not None and out.image.size == (64, 64)
    assert backend.params()["scheduler"] == scheduler
    if scheduler in MIN_STEPS:  # fewer steps crash inside diffusers: refused up front
        with pytest.raises(ConfigError, match=f"steps must be >= {MIN_STEPS[scheduler]}"):
            get_backend("instruct-pix2pix", model=str(tiny_dirs["p2p"]), steps=MIN_STEPS[scheduler] - 1,
                        scheduler=scheduler)


def test_p2p_batch_shapes_order_and_batch_invariance(p2p) -> None:
    images = [_image(1, 128, 96), _image(2, 96, 128), _image(3, 128, 96), _image(4, 300, 150)]
    prompts = ["make it snowy", "turn the sky red", "add a hat", "make it snowy"]
    items = [_item(f"k{i}", im, seed=100 + i, prompt=p) for i, (im, p) in enumerate(zip(images, prompts, strict=True))]
    outs = p2p.run_batch(items)
    assert len(outs) == 4
    assert [o.error for o in outs] == [None] * 4
    assert [o.image.size for o in outs] == [(128, 96), (96, 128), (128, 96), (128, 64)]
    assert all(o.seconds > 0 for o in outs)
    singles = [p2p.run_batch([item])[0] for item in items]
    for i in range(4):
        # Same seed alone or inside a batch: equal up to one 8-bit level (float rounding of
        # batched kernels; exact equality does not hold).
        assert np.abs(_px(outs[i].image) - _px(singles[i].image)).max() <= 1
    # Order: items 0 and 2 share a size and a call, yet each output matches its own item.
    assert np.abs(_px(outs[0].image) - _px(outs[2].image)).mean() > 10


def test_p2p_seed_determinism(p2p) -> None:
    image = _image(7, 128, 96)
    first = p2p.run_batch([_item("a", image, seed=7)])[0]
    again = p2p.run_batch([_item("a", image, seed=7)])[0]
    other = p2p.run_batch([_item("a", image, seed=8)])[0]
    assert np.array_equal(_px(first.image), _px(again.image))
    assert np.abs(_px(first.image) - _px(other.image)).mean() > 10


def test_p2p_negative_prompt_is_used(p2p) -> None:
    image = _image(9, 96, 96)
    plain = p2p.run_batch([_item("n", image, seed=3)])[0]
    negative = p2p.run_batch([_item("n", image, seed=3, negative="blurry, dark")])[0]
    assert np.abs(_px(plain.image) - _px(negative.image)).max() > 0


def test_p2p_bad_item_does_not_fail_batch(p2p) -> None:
    items = [_item("good-1", _image(1, 96, 96), 1), _item("empty", _image(2, 96, 96), 2, prompt=" "),
             _item("bad-seed", _image(3, 96, 96), -5), _item("good-2", _image(4, 96, 96), 4)]
    outs = p2p.run_batch(items)
    assert [o.image is not None for o in outs] == [True, False, False, True]
    assert "empty" in outs[1].error and "prompt" in outs[1].error
    assert "bad-seed" in outs[2].error and "seed" in outs[2].error


@pytest.mark.parametrize(("bias", "expected"), [(float("nan"), ERROR_NAN), (-10.0, ERROR_BLACK)])
def test_p2p_nan_and_black_outputs_are_errors(tiny_dirs, bias: float, expected: str) -> None:
    # A real pipeline whose VAE decoder ends in a constant: NaN, or -10 (black after clamping).
    backend = get_backend("instruct-pix2pix", model=str(tiny_dirs["p2p"]), steps=2, max_side=64)
    backend.load()
    conv = backend.pipe.vae.decoder.conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(bias)
    outs = backend.run_batch([_item("x", _image(5, 64, 64), 1), _item("y", _image(6, 64, 64), 2)])
    assert [(o.image, o.error) for o in outs] == [(None, expected), (None, expected)]


# ----------------------------------------------------------------------------- Qwen-Image-Edit Plus


def test_plus_processor_has_no_video_part(plus) -> None:
    processor = plus.pipe.processor
    assert "video_processor" not in type(processor).get_attributes()
    assert not hasattr(processor, "video_processor")
    encoded = processor(text=["Picture 1: <|vision_start|><|image_pad|><|vision_end|>hi"],
                        images=[_image(0, 64, 96)], return_tensors="pt")
    n_image_tokens = int((encoded["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == int(encoded["image_grid_thw"].prod()) // 4 > 0


def test_plus_person_and_garments(plus) -> None:
    person, coat, hat = _image(20, 300, 200), _image(21, 64, 64), _image(22, 80, 48)
    items = [
        _item("one-garment", person, 5, "put the coat from picture 2 on the person", [coat]),
        _item("two-garments", _image(23, 64, 96), 5, "dress the person in pictures 2 and 3", [coat, hat]),
        _item("other-garment", person, 5, "put the coat from picture 2 on the person", [hat]),
        _item("too-many", person, 5, "wear all", [coat, hat, coat]),
        _item("no-garment", person, 5, "make it snowy"),
    ]
    outs = plus.run_batch(items)
    assert len(outs) == 5
    assert [o.error is None for o in outs] == [True, True, True, False, True]
    assert "too-many" in outs[3].error and "max_garments" in outs[3].error
    assert outs[0].image.size == (128, 80)  # fit_resolution(300, 200, 128, multiple=16)
    assert outs[1].image.size == (64, 96)
    # The garment image reaches the model: same person, prompt and seed, other garment.
    assert np.abs(_px(outs[0].image) - _px(outs[2].image)).max() > 0
    assert plus.params()["vae_image_area"] == 128 * 128  # recorded with every edit


def test_plus_seed_determinism(plus) -> None:
    person, coat = _image(30, 64, 64), _image(31, 64, 64)
    first = plus.run_batch([_item("s", person, 11, "wear the coat", [coat])])[0]
    again = plus.run_batch([_item("s", person, 11, "wear the coat", [coat])])[0]
    other = plus.run_batch([_item("s", person, 12, "wear the coat", [coat])])[0]
    assert np.array_equal(_px(first.image), _px(again.image))
    assert np.abs(_px(first.image) - _px(other.image)).mean() > 5


def test_plus_nan_output_is_error(tiny_dirs) -> None:
    backend = get_backend("qwen-image-edit-plus", model=str(tiny_dirs["plus"]), steps=1, max_side=64,
                          vae_image_area=128 * 128, condition_image_area=112 * 112)
    backend.load()
    with torch.no_grad():
        backend.pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    out = backend.run_batch([_item("q", _image(40, 64, 64), 1, "wear it", [_image(41, 32, 32)])])[0]
    assert (out.image, out.error) == (None, ERROR_NAN)
