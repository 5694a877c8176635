"""Offline tokenizer builders for tiny test checkpoints.

Nothing here downloads anything: tokenizers are trained on a small built-in English corpus
with the ``tokenizers`` library. Heavy libraries are imported inside the functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Special tokens of Qwen2 / Qwen2.5-VL, in the order the real tokenizer adds them.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: Added tokens that the real tokenizer does not mark special (they survive decoding).
QWEN_PLAIN_ADDED_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>")

_CORPUS_TEXT = """\
You are a helpful assistant. Describe the person in the picture and the garment they wear.
The first image shows a woman in a red summer dress standing on a city street.
The second image shows a man wearing a blue denim jacket, a white shirt and black jeans.
A photo of a model in a long grey wool coat, leather boots and a striped scarf.
Replace the jacket with the garment from the second image and keep the face, pose and
background unchanged. The lighting is soft and natural; the colours are warm.
Answer with a JSON object that follows the schema. Use short, factual sentences.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Is the edit feasible? Yes, the garment is clearly visible and the pose is frontal.
Confidence is high, medium or low. Numbers such as 0.25, 0.5, 0.75 and 1.0 are scores.
Categories: top, bottom, dress, outerwear, shoes, accessory, full body, upper body.
Materials: cotton, linen, silk, wool, denim, leather, polyester, knit, lace, velvet.
Patterns: solid, striped, checked, floral, dotted, printed, plain, graphic, logo.
Fit: slim, regular, relaxed, oversized, cropped, tailored, fitted, flared, wide leg.
Details: collar, sleeve, cuff, pocket, button, zipper, hood, hem, waistband, neckline.
Views: front, back, side, close up, full length, half length, seated, walking, standing.
Quality: sharp, blurry, noisy, overexposed, underexposed, cluttered, occluded, cropped.
Keep the identity, hairstyle, skin tone, body shape and accessories exactly the same.
Only the requested garment changes; shadows, folds and wrinkles follow the new fabric.
"""

_CORPUS_JSON: list[dict[str, Any]] = [
    {"caption": "a woman in a red dress", "confidence": 0.9, "labels": ["dress", "red"]},
    {"person": {"visible": True, "pose": "frontal"}, "garment": {"category": "top"}},
    {"feasibility": "high", "score": 0.75, "notes": [], "count": 3, "ok": False, "x": None},
    {"items": [{"name": "jacket", "color": "blue"}, {"name": "jeans", "color": "black"}]},
]


_SUBJECTS = ("the woman", "the man", "a model", "the person", "a child", "the customer")
_VERBS = ("wears", "holds", "shows", "removes", "tries on", "carries", "prefers")
_ADJECTIVES = (
    "red",
    "blue",
    "green",
    "black",
    "white",
    "grey",
    "yellow",
    "pink",
    "brown",
    "long",
    "short",
    "loose",
    "tight",
    "warm",
    "light",
    "bright",
    "dark",
    "soft",
)
_NOUNS = (
    "dress",
    "jacket",
    "shirt",
    "coat",
    "skirt",
    "sweater",
    "hoodie",
    "trousers",
    "scarf",
    "hat",
    "shoes",
    "boots",
    "bag",
    "belt",
    "blouse",
    "vest",
    "gloves",
    "socks",
)
_PLACES = (
    "on a street",
    "in a studio",
    "at the beach",
    "in a park",
    "indoors",
    "outside",
    "against a white wall",
    "in front of a mirror",
    "near a window",
)


def _corpus() -> list[str]:
    """Lines the BPE is trained on: English, JSON and every printable ASCII character."""
    lines = [line for line in _CORPUS_TEXT.splitlines() if line]
    for i, subject in enumerate(_SUBJECTS):
        for j, verb in enumerate(_VERBS):
            for k, adjective in enumerate(_ADJECTIVES):
                noun = _NOUNS[(i + j + k) % len(_NOUNS)]
                place = _PLACES[(i * 7 + j * 3 + k) % len(_PLACES)]
                lines.append(f"{subject.capitalize()} {verb} a {adjective} {noun} {place}.")
    lines += [json.dumps(obj) for obj in _CORPUS_JSON]
    lines += [json.dumps(obj, indent=2) for obj in _CORPUS_JSON]
    lines.append(string.printable)
    lines.append(" ".join(string.digits) + " " + " ".join(string.punctuation))
    # Repeat so the frequent pairs survive the trainer's min_frequency.
    return lines * 3


def train_bytelevel_bpe(vocab_size: int = 1500) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on the built-in corpus; return ``(vocab, merges)``.

    The initial alphabet holds all 256 byte symbols, so any text (and any byte sequence)
    can be encoded without an unknown token.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges: list[tuple[str, str]] = []
    for merge in model["merges"]:
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((pair[0], pair[1]))
    return vocab, merges


def build_qwen_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 1500,
                         chat_template: str | None = None) -> Any:
    """Build a small Qwen2-style tokenizer offline and save it to ``out_dir`` when given.

    The tokenizer has Qwen2.5-VL's special tokens (and ``chat_template`` when given), ``<|im_end|>`` as its
    end-of-sequence token and ``<|endoftext|>`` as padding (as Qwen2.5-VL-Instruct).
    Returns the ``transformers`` tokenizer.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bytelevel_bpe(vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # tuples: required by transformers 5
        unk_token=None,  # type: ignore[arg-type]
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        padding_side="left",
    )
    new_tokens = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    new_tokens += [AddedToken(t, special=False, normalized=False) for t in QWEN_PLAIN_ADDED_TOKENS]
    tokenizer.add_tokens(new_tokens)
    tokenizer.eos_token = "<|im_end|>"
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.padding_side = "left"
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out))
        logger.debug("saved tiny Qwen tokenizer (%d tokens) to %s", len(tokenizer), out)
    return tokenizer


def write_clip_tokenizer_files(out_dir: str | Path, vocab_size: int = 700) -> Path:
    """Write a small CLIP-style BPE tokenizer (``vocab.json`` + ``merges.txt``) into ``out_dir``.

    Trained offline with the ``tokenizers`` BPE trainer on the built-in corpus, CLIP style:
    byte-level symbols, ``</w>`` ending each word. Every byte symbol is in the vocabulary both
    plain and word-final, so any text encodes without an unknown token. Ids:
    ``<|startoftext|>`` 0, ``<|endoftext|>`` 1 (also padding and unknown).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator([line.lower() for line in _corpus()], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for symbol in sorted(alphabet):  # CLIP encodes a word's last byte as "<byte></w>"
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
