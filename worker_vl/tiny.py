"""A tiny random-weight Qwen2.5-VL checkpoint, built offline for tests and smoke runs.

The checkpoint has the real architecture (vision tower with window attention, merger,
M-RoPE text decoder) at toy sizes, the offline tokenizer from :mod:`common.devkit.tinytok`, and
an image processor config, so it loads with ``QwenVLBackend(model=str(path))`` exactly as
a hub checkpoint would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from worker_vl.chat_template import QWEN_VL_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

TINY_SEED = 1234
#: Image bounds of the tiny checkpoint (in pixels): 4x4 to 16x16 patches of 14 px.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 224 * 224


ARCHITECTURES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def build_tiny_vl(out_dir: str | Path, architecture: str = "qwen2_5_vl", *, head_dim: int = 16) -> Path:
    """Write a tiny random Qwen-VL checkpoint to ``out_dir`` and return that path.

    ``architecture`` is Qwen2.5-VL (the default model's), Qwen2-VL or Qwen3-VL: the backend
    loads all three through the same code. Weights are drawn with a fixed seed, so two builds
    give the same model. ``head_dim`` 32 or more gives a checkpoint vLLM's CPU attention
    serves (it takes head sizes 32, 64, 80 and up): :func:`build_tiny_vl_served`.
    """
    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from common.devkit.tinytok import build_qwen_tokenizer

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r}: allowed {', '.join(ARCHITECTURES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen_tokenizer(out, chat_template=QWEN_VL_CHAT_TEMPLATE)
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in (
            "<|endoftext|>",
            "<|im_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        )
    }
    # Round the vocabulary up, as real checkpoints pad their embedding matrices.
    vocab_size = ((len(tokenizer) + 63) // 64) * 64

    heads = 4
    hidden = heads * head_dim
    half = head_dim // 2  # mrope_section must sum to head_dim / 2: [2, 3, 3] at 16, [4, 6, 6] at 32
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 1_000_000.0,
                            "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]}
    text = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    special = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    patch = 14
    if architecture == "qwen2_5_vl":
        config: Any = transformers.Qwen2_5_VLConfig(
            text_config=text,
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "patch_size": patch,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 56,
                "out_hidden_size": hidden,
                "fullatt_block_indexes": [1],
            },
            tie_word_embeddings=False,
            **special,
        )
        model_cls: Any = transformers.Qwen2_5_VLForConditionalGeneration
    elif architecture == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            text_config=text,
            vision_config={"depth": 2, "embed_dim": 32, "hidden_size": hidden, "num_heads": 2, "patch_size": patch,
                           "spatial_merge_size": 2, "temporal_patch_size": 2, "mlp_ratio": 2},
            tie_word_embeddings=False,
            **special,
        )
        model_cls = transformers.Qwen2VLForConditionalGeneration
    else:  # Qwen3-VL: 16 px patches, interleaved M-RoPE, deepstack features from the vision tower
        patch = 16
        config = transformers.Qwen3VLConfig(
            text_config={**text, "head_dim": head_dim, "rope_parameters": {**rope, "mrope_interleaved": True}},
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2,
                           "out_hidden_size": hidden, "deepstack_visual_indexes": [0],
                           "num_position_embeddings": 64},
            tie_word_embeddings=False,
            **special,
        )
        model_cls = transformers.Qwen3VLForConditionalGeneration
    text_config: Any = config.text_config
    assert sum(text_config.rope_parameters["mrope_section"]) == head_dim // 2

    torch.manual_seed(TINY_SEED)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(str(out))

    image_processor = Qwen2VLImageProcessorPil(  # the same number of patches whatever the patch size
        min_pixels=TINY_MIN_PIXELS * patch * patch // (14 * 14),
        max_pixels=TINY_MAX_PIXELS * patch * patch // (14 * 14),
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
    )
    image_processor.save_pretrained(str(out))
    # The processor-level files that hub checkpoints carry, written without building a
    # processor object (the full Qwen2.5-VL processor needs torchvision for video).
    (out / "chat_template.json").write_text(
        json.dumps({"chat_template": QWEN_VL_CHAT_TEMPLATE}, indent=2), encoding="utf-8"
    )
    logger.info("built tiny %s checkpoint at %s", architecture, out)
    return out


def build_tiny_vl_served(out_dir: str | Path) -> Path:
    """The tiny Qwen2.5-VL with 32-wide attention heads: a checkpoint vLLM's CPU build serves
    (``synthpipe models tiny`` writes it as ``vl-served``)."""
    return build_tiny_vl(out_dir, "qwen2_5_vl", head_dim=32)
