"""VL throughput against batch size: analyses/s and generated tokens/s.

    python benchmarks/bench_vl.py                         # tiny Qwen2.5-VL on this machine
    python benchmarks/bench_vl.py --size 7b --device cuda # random weights at Qwen2.5-VL-7B size
    python benchmarks/bench_vl.py --backend openai --items 32   # in-process HF vs a vLLM server (.venv-vllm)

Runs the real QwenVLBackend (same preprocessing, xgrammar-constrained decoding with the
try-on analysis schema) over the same items at each batch size, after one warm-up batch.
Random weights are fine for timing; ``--size`` builds random weights of that shape on the device
(nothing written: the folder holds the config, the offline tokenizer and the chat template).
``valid`` counts answers without an error; ``complete_valid`` those that are a whole analysis
validating against the schema (an answer cut off at ``--max-new-tokens`` is neither).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Text-model shapes of the released Qwen2.5-VL sizes (vision tower as released).
SIZES = {
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "vocab_size": 151936},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064},
}


def random_checkpoint(size: str, out: Path) -> Path:
    """A folder like a released Qwen2.5-VL of ``size`` (config, offline tokenizer, processor
    config, chat template) without weights: load it inside ``realsize.random_vl_weights``, which
    builds the weights at random on the device."""
    from transformers import Qwen2_5_VLConfig

    from worker_vl.tiny import build_tiny_vl

    tiny = build_tiny_vl(out)  # tokenizer, processor config, chat template
    cfg = Qwen2_5_VLConfig.from_pretrained(tiny)
    text_cfg: Any = cfg.text_config
    vision_cfg: Any = cfg.vision_config
    text = SIZES[size]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    for key, value in text.items():
        setattr(text_cfg, key, value)
    if getattr(text_cfg, "layer_types", None) is not None:  # one per layer (transformers 5 checks)
        text_cfg.layer_types = ["full_attention"] * text["num_hidden_layers"]
    section = [16, 24, 24] if head_dim == 128 else [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    rope = getattr(text_cfg, "rope_parameters", None)
    if isinstance(rope, dict):  # transformers 5: rope_theta lives here too; setting rope_scaling would drop it
        text_cfg.rope_parameters = {**rope, "mrope_section": section}
    else:
        text_cfg.rope_scaling = {"type": "mrope", "mrope_section": section}
    vision_cfg.update({"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": text["hidden_size"]})
    for weights in [*out.glob("*.safetensors"), *out.glob("*.safetensors.index.json")]:
        weights.unlink()
    cfg.save_pretrained(out)
    return out


KEYWORDS = {"occasion": "office day", "season": "autumn", "setting": "studio", "lighting": "soft daylight",
            "style": "smart casual"}


def _complete(raw_text: str) -> bool:
    """The answer is a whole analysis that validates against the try-on schema."""
    from worker_vl.service import parse_analysis

    try:
        parse_analysis("tryon", raw_text)
    except Exception:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", *SIZES], default="tiny")
    ap.add_argument("--model", help="use this checkpoint instead of building one")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", choices=["qwen", "openai"], default="qwen",
                    help="openai: in-process HF batched against a vLLM server (.venv-vllm) on the same tiny model "
                         "and items (benchmarks/vl_served.py)")
    ap.add_argument("--concurrency", default="1,8,32", help="requests in flight against the server (--backend openai)")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-vl-")  # own data dir, database and storage; none of the caller's settings

    from realsize import random_vl_weights

    from common.core.prompts import render_for
    from common.devkit import samples
    from common.domain.schemas import analysis_json_schema
    from worker_vl.backends.base import VLItem
    from worker_vl.backends.qwen import QwenVLBackend
    from worker_vl.tiny import build_tiny_vl

    tmp = Path(tempfile.mkdtemp(prefix="bench-vl-"))
    if args.backend == "openai":
        import vl_served

        system, user = render_for("tryon", "v1", keywords=KEYWORDS, variation=None, n_images=2)
        items = [VLItem(key=f"bench-{i}", images=[samples.person(i), samples.garment(i)], system_prompt=system,
                        user_prompt=user, json_schema=analysis_json_schema("tryon")) for i in range(args.items)]
        rows = vl_served.compare(args, items, tmp, _complete)
        print(f"tiny Qwen2.5-VL (32-wide heads), {args.items} try-on items, max_new_tokens {args.max_new_tokens}, CPU")
        vl_served.print_table(rows)
        print(json.dumps(rows))
        return
    random_init = not args.model and args.size != "tiny"
    model = Path(args.model) if args.model else (
        build_tiny_vl(tmp / "vl") if args.size == "tiny" else random_checkpoint(args.size, tmp / "vl"))
    backend = QwenVLBackend(model=str(model), device=args.device, max_new_tokens=args.max_new_tokens,
                            min_pixels=64 * 28 * 28 if args.size != "tiny" else 4 * 28 * 28,
                            max_pixels=256 * 28 * 28 if args.size != "tiny" else 16 * 28 * 28)
    with random_vl_weights(args.device) if random_init else contextlib.nullcontext():
        backend.load()
    keywords = KEYWORDS
    schema = analysis_json_schema("tryon")
    items = []
    for i in range(args.items):
        system, user = render_for("tryon", "v1", keywords=keywords, variation=None, n_images=2)
        items.append(VLItem(key=f"bench-{i}", images=[samples.person(i), samples.garment(i)],
                            system_prompt=system, user_prompt=user, json_schema=schema))
    backend.max_new_tokens = min(args.max_new_tokens, 16)  # warm-up: grammar compile, kernels; a few tokens do
    backend.run_batch(items[:1])
    backend.max_new_tokens = args.max_new_tokens
    rows = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        started = time.perf_counter()
        tokens = ok = complete = 0
        for i in range(0, len(items), bs):
            for out in backend.run_batch(items[i:i + bs]):
                tokens += out.completion_tokens
                ok += out.error is None
                complete += out.error is None and _complete(out.raw_text)
        seconds = time.perf_counter() - started
        rows.append({"batch_size": bs, "items": len(items), "valid": ok, "complete_valid": complete,
                     "max_new_tokens": args.max_new_tokens, "seconds": round(seconds, 2),
                     "tokens_per_analysis": round(tokens / len(items), 1),
                     "analyses_per_s": round(len(items) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1)})
    base = rows[0]["analyses_per_s"]
    print(f"model: {args.size} ({model}), device {backend.params().get('device')}, {args.items} try-on items")
    print(f"{'batch':>5} {'valid':>6} {'seconds':>8} {'analyses/s':>11} {'tokens/s':>9} {'vs batch 1':>10}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['valid']:>6} {r['seconds']:>8} {r['analyses_per_s']:>11} "
              f"{r['tokens_per_s']:>9} {r['analyses_per_s'] / base:>9.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
