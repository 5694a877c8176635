"""Tiny random CLIP and DINOv2 checkpoints, built offline in a second, for tests and the demo.

Real architectures (``CLIPModel``, ``Dinov2Model``) with fixed seeds, written with
``save_pretrained`` and loaded back by the scorers through ``from_pretrained``, exactly like a
hub checkpoint. The CLIP tokenizer uses the byte-level BPE merges that ``common.devkit.tinytok``
trains offline, in CLIP's vocabulary layout (word-final symbols end in ``</w>``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from worker_score.backends.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_SIZE = 32
PATCH_SIZE = 8


def build_tiny_clip_tokenizer(out_dir: str | Path, vocab_size: int = 600):  # -> CLIPTokenizer
    """A CLIP tokenizer from ``common.devkit.tinytok``'s offline BPE: ``<|startoftext|>`` 0,
    ``<|endoftext|>`` 1 (also padding), the 256 byte symbols plain and word-final, then one token
    per merge. Saved to ``out_dir``; returns it loaded back."""
    from transformers import AutoTokenizer, CLIPTokenizer

    from common.devkit.tinytok import train_bytelevel_bpe

    base, merges = train_bytelevel_bpe(vocab_size)
    symbols = [t for t, _ in sorted(base.items(), key=lambda kv: kv[1]) if len(t) == 1]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(token, len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # type: ignore[arg-type]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def _write_preprocessor(out: Path, processor: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """``preprocessor_config.json`` as the real checkpoints have it (resize the short side,
    centre-crop, normalise), at the tiny image size."""
    config = {
        "image_processor_type": processor, "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
        "image_std": list(std), "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_tiny_clip(out_dir: str | Path) -> Path:
    """Write a tiny random ``CLIPModel`` (2-layer text and vision towers, width 32, 32 px images,
    8 px patches, projection 16) with its tokenizer and preprocessor config to ``out_dir``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    tokenizer = build_tiny_clip_tokenizer(out)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(out))
    _write_preprocessor(out, "CLIPImageProcessor", CLIP_MEAN, CLIP_STD)
    log.info("tiny CLIP written to %s", out)
    return out


def build_tiny_dinov2(out_dir: str | Path) -> Path:
    """Write a tiny random ``Dinov2Model`` (2 layers, width 32, 32 px images, 8 px patches) with
    its preprocessor config to ``out_dir``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                     image_size=IMAGE_SIZE, patch_size=PATCH_SIZE))
    model.save_pretrained(str(out))
    _write_preprocessor(out, "BitImageProcessor", IMAGENET_MEAN, IMAGENET_STD)
    log.info("tiny DINOv2 written to %s", out)
    return out
