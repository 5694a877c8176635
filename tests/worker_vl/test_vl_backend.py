"""QwenVLBackend on a tiny random-weight Qwen2.5-VL built offline (no mocks, CPU)."""

from __future__ import annotations

import enum
import json
import string
from pathlib import Path
from typing import Annotated, Literal

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

from pydantic import BaseModel, Field  # noqa: E402

from common.core.backends import VL_BACKENDS as BACKENDS
from common.core.errors import ConfigError  # noqa: E402
from worker_vl.backends import get_backend  # noqa: E402
from worker_vl.backends.base import Backend, VLItem, VLOutput  # noqa: E402
from worker_vl.constrained import bound_schema  # noqa: E402


class Feasibility(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Garment(BaseModel):
    category: Literal["top", "bottom", "dress", "outerwear"]
    color: str = Field(max_length=12)


class Analysis(BaseModel):
    person_visible: bool
    garment: Garment
    feasibility: Feasibility
    confidence: float = Field(ge=0, le=1)
    tags: list[Annotated[str, Field(max_length=10)]] = Field(max_length=3)


SCHEMA = Analysis.model_json_schema()
MAX_NEW_TOKENS = 200  # the longest output SCHEMA allows is 190 characters (<= 1 token each)


def _image(seed: int, width: int, height: int):  # -> PIL.Image.Image
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _item(i: int, schema: dict | None = SCHEMA, n_images: int = 2) -> VLItem:
    sizes = [(84 + 56 * i, 70), (56, 112 + 28 * i), (100, 100), (64, 90)]
    return VLItem(
        key=f"item-{i}",
        images=[_image(10 * i + j, *sizes[j]) for j in range(n_images)],
        system_prompt="You describe fashion photos as JSON.",
        user_prompt="Describe the garment in the pictures" + " in detail" * i + ".",
        json_schema=schema,
    )


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker_vl.tiny import build_tiny_vl

    return build_tiny_vl(tmp_path_factory.mktemp("tiny") / "vl")


@pytest.fixture(scope="module")
def backend(tiny_path: Path):
    b = get_backend("qwen", model=str(tiny_path), max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    b.load()
    yield b
    b.unload()


def test_registry_and_protocol(backend) -> None:
    assert BACKENDS["qwen"] == "worker_vl.backends.qwen:QwenVLBackend"
    assert isinstance(backend, Backend)
    with pytest.raises(ConfigError):
        get_backend("no-such-backend")
    with pytest.raises(ConfigError):
        get_backend("qwen", quantization="3bit")


def test_load_is_idempotent(backend) -> None:
    model = backend.model
    backend.load()
    assert backend.model is model


def test_tiny_tokenizer_round_trips_text_and_json(backend) -> None:
    tok = backend.tokenizer
    for text in (string.printable, json.dumps({"a": [1, 2.5, 'q"uote\\'], "b": None})):
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|im_end|>"
    assert 1000 <= backend.model.config.text_config.vocab_size <= 2048


def test_bound_schema_replaces_max_length_with_printable_pattern() -> None:
    bounded = bound_schema(SCHEMA)
    color = bounded["$defs"]["Garment"]["properties"]["color"]
    assert "maxLength" not in color and color["pattern"].endswith("{0,12}$")
    assert bounded["properties"]["tags"]["items"]["pattern"].endswith("{0,10}$")
    assert SCHEMA["$defs"]["Garment"]["properties"]["color"]["maxLength"] == 12  # not mutated


def test_bounded_strings_refuse_control_characters(backend) -> None:
    import xgrammar as xgr

    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "maxLength": 5}},
        "required": ["s"],
    }
    matcher = xgr.GrammarMatcher(backend.grammar_for(schema))
    for text, ok in [
        ('{"s":"ab [~"}', True),
        ('{"s": "ab [~"}', False),  # compact separators only (as vLLM writes with disable_any_whitespace)
        ('{"s":"a\x01"}', False),
        ('{"s":"a\\u0001"}', False),
        ('{"s":"abcdef"}', False),
    ]:
        matcher.reset()
        assert matcher.accept_string(text) is ok, text


def test_long_string_bounds_compile_and_hold(backend) -> None:
    import xgrammar as xgr

    # xgrammar 0.2.8 cannot compile a regex repeat count above 128: bounds are chunked.
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 8, "maxLength": 300}},
        "required": ["s"],
    }
    matcher = xgr.GrammarMatcher(backend.grammar_for(schema))
    for length, ok in [(7, False), (8, True), (200, True), (300, True), (301, False)]:
        matcher.reset()
        assert matcher.accept_string('{"s":"' + "x" * length + '"}') is ok, length


def test_project_analysis_schemas_compile(backend) -> None:
    schemas = pytest.importorskip("common.domain.schemas")
    for recipe in ("tryon", "enrich"):
        assert backend.grammar_for(schemas.analysis_json_schema(recipe)) is not None


def test_batch_json_outputs_parse_and_validate(backend) -> None:
    items = [_item(i) for i in range(4)]
    outputs = backend.run_batch(items)
    assert len(outputs) == 4
    for out in outputs:
        assert isinstance(out, VLOutput)
        assert out.error is None, out.error
        parsed = Analysis.model_validate(json.loads(out.raw_text))
        for text in [parsed.garment.color, *parsed.tags]:
            assert all(" " <= ch <= "~" for ch in text), text
        assert out.prompt_tokens > 0 and 0 < out.completion_tokens <= MAX_NEW_TOKENS
        assert out.seconds > 0
        # compact separators, as vLLM writes them with disable_any_whitespace: no whitespace between tokens
        assert not any(ch.isspace() for ch in _outside_strings(out.raw_text)), out.raw_text


def _outside_strings(text: str) -> str:
    """The JSON text with every string literal taken out (their content may hold spaces)."""
    out, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        else:
            out.append(ch)
    return "".join(out)


def test_greedy_batch_equals_single_calls(backend) -> None:
    # The free-text item is the shortest: with JSON the first tokens are forced, which
    # would hide a padding bug.
    items = [_item(0, schema=None)] + [_item(i) for i in range(1, 4)]
    batch = backend.run_batch(items)
    singles = [backend.run_batch([item])[0] for item in items]
    assert len({o.prompt_tokens for o in batch}) == 4  # different lengths: padding matters
    assert [o.raw_text for o in batch] == [o.raw_text for o in singles]
    assert [o.completion_tokens for o in batch] == [o.completion_tokens for o in singles]
    assert [o.prompt_tokens for o in batch] == [o.prompt_tokens for o in singles]
    # Free text has no grammar: it runs to max_new_tokens or a stop token.
    assert batch[0].error is None and batch[0].completion_tokens > 0
    assert all(o.error is None for o in batch)


def test_bad_items_fail_alone(backend) -> None:
    good = _item(0)
    no_images = _item(1, n_images=0)
    one_pixel = _item(2)
    one_pixel.images = [_image(5, 1, 1)]
    too_thin = _item(3)
    too_thin.images = [_image(6, 14, 3200)]  # aspect ratio > 200: the image processor refuses
    bad_schema = _item(1)
    bad_schema.json_schema = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    outputs = backend.run_batch([no_images, good, one_pixel, too_thin, bad_schema])
    assert outputs[1].error is None
    Analysis.model_validate_json(outputs[1].raw_text)
    for k in (0, 2, 3, 4):
        assert outputs[k].error and outputs[k].error_kind == "input", outputs[k]
        assert outputs[k].raw_text == ""
    assert "0 images" in outputs[0].error
    assert "1x1" in outputs[2].error
    assert "preprocessing failed" in outputs[3].error
    # The good item answers exactly as it does alone.
    assert outputs[1].raw_text == backend.run_batch([good])[0].raw_text


def test_prompt_tokens_count_text_and_image_tokens(backend) -> None:
    item = _item(0)
    out = backend.run_batch([item])[0]
    messages = [
        {"role": "system", "content": item.system_prompt},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": item.user_prompt},
            ],
        },
    ]
    text_ids = backend.tokenizer.apply_chat_template(
        messages,
        chat_template=backend.chat_template,
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )
    grid = backend.image_processor(images=item.images, return_tensors="pt")["image_grid_thw"]
    image_tokens = int(grid.prod(dim=1).sum().item()) // 4
    # each image placeholder token expands into image_tokens of that image
    assert out.prompt_tokens == len(text_ids) - 2 + image_tokens


def test_max_pixels_bounds_image_tokens(backend, tiny_path: Path) -> None:
    small = get_backend("qwen", model=str(tiny_path), max_pixels=56 * 56, max_new_tokens=4)
    item = _item(0, schema=None)
    item.images = [_image(1, 224, 224)]
    # 224 px: 16x16 patches -> 64 image tokens; bounded to 56x56: 4x4 patches -> 4 tokens
    full = backend.run_batch([item])[0].prompt_tokens
    assert full - small.run_batch([item])[0].prompt_tokens == 64 - 4
    small.unload()


def test_too_few_new_tokens_is_reported_not_raised(tiny_path: Path) -> None:
    short = get_backend("qwen", model=str(tiny_path), max_new_tokens=8)
    outputs = short.run_batch([_item(0), _item(1)])
    for out in outputs:
        assert out.error_kind == "model_output" and out.error_code == "vl.truncated" and "max_new_tokens" in (out.error or "")
        assert out.raw_text.startswith("{") and out.completion_tokens == 8
    short.unload()


def test_sampling_is_seeded_and_still_valid(tiny_path: Path) -> None:
    sampler = get_backend(
        "qwen",
        model=str(tiny_path),
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=1.5,
        top_p=0.9,
        seed=3,
    )
    items = [_item(0), _item(1)]
    first, again = sampler.run_batch(items), sampler.run_batch(items)
    assert [o.raw_text for o in first] == [o.raw_text for o in again]
    for out in first:
        assert out.error is None, out.error
        Analysis.model_validate_json(out.raw_text)
    sampler.unload()


@pytest.mark.parametrize("architecture", ["qwen2_vl", "qwen3_vl"])
def test_qwen2_vl_and_qwen3_vl_run_through_the_same_backend(architecture: str,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """Other Qwen-VL generations load by model path alone and give schema-valid JSON batches."""
    from worker_vl.tiny import build_tiny_vl

    path = build_tiny_vl(tmp_path_factory.mktemp(architecture) / "vl", architecture=architecture)
    b = get_backend("qwen", model=str(path), max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    b.load()
    try:
        assert type(b.model).__name__.lower().startswith(architecture.replace("_", ""))
        outputs = b.run_batch([_item(0), _item(1)])
    finally:
        b.unload()
    assert len(outputs) == 2
    for out in outputs:
        assert out.error is None, out.error
        Analysis.model_validate_json(out.raw_text)
