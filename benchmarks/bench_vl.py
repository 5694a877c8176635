"""VL throughput against batch size: analyses/s and generated tokens/s.

    python benchmarks/bench_vl.py                         # tiny Qwen2.5-VL on this machine
    python benchmarks/bench_vl.py --size 7b --device cuda # random weights at Qwen2.5-VL-7B size

Runs the real QwenVLBackend (same preprocessing, xgrammar-constrained decoding with the
try-on analysis schema) over the same items at each batch size, after one warm-up batch.
Random weights are fine for timing; ``--size`` builds a random checkpoint of that shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Text-model shapes of the released Qwen2.5-VL sizes (vision tower as released).
SIZES = {
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4},
}


def build_random(size: str, out: Path) -> Path:
    """A random-weight Qwen2.5-VL of a released size, with the offline tokenizer."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from worker_vl.tiny import build_tiny_vl

    tiny = build_tiny_vl(out)  # tokenizer, processor config, chat template
    cfg = Qwen2_5_VLConfig.from_pretrained(tiny)
    text = SIZES[size]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    for key, value in text.items():
        setattr(cfg.text_config, key, value)
    cfg.text_config.rope_scaling = {"type": "mrope", "mrope_section": [16, 24, 24] if head_dim == 128 else
                                    [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}
    cfg.vision_config.update({"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                              "out_hidden_size": text["hidden_size"]})
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", *SIZES], default="tiny")
    ap.add_argument("--model", help="use this checkpoint instead of building one")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from common.core.prompts import render_for
    from common.devkit import samples
    from common.domain.schemas import analysis_json_schema
    from worker_vl.backends.base import VLItem
    from worker_vl.backends.qwen import QwenVLBackend
    from worker_vl.tiny import build_tiny_vl

    tmp = Path(tempfile.mkdtemp(prefix="bench-vl-"))
    model = Path(args.model) if args.model else (
        build_tiny_vl(tmp / "vl") if args.size == "tiny" else build_random(args.size, tmp / "vl"))
    backend = QwenVLBackend(model=str(model), device=args.device, max_new_tokens=args.max_new_tokens,
                            min_pixels=64 * 28 * 28 if args.size != "tiny" else 4 * 28 * 28,
                            max_pixels=256 * 28 * 28 if args.size != "tiny" else 16 * 28 * 28)
    backend.load()
    keywords = {"occasion": "office day", "season": "autumn", "setting": "studio", "lighting": "soft daylight",
                "style": "smart casual"}
    schema = analysis_json_schema("tryon")
    items = []
    for i in range(args.items):
        system, user = render_for("tryon", "v1", keywords=keywords, variation=None, n_images=2)
        items.append(VLItem(key=f"bench-{i}", images=[samples.person(i), samples.garment(i)],
                            system_prompt=system, user_prompt=user, json_schema=schema))
    backend.run_batch(items[:1])  # warm-up: grammar compile, kernels
    rows = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        started = time.perf_counter()
        tokens = ok = 0
        for i in range(0, len(items), bs):
            for out in backend.run_batch(items[i:i + bs]):
                tokens += out.completion_tokens
                ok += out.error is None
        seconds = time.perf_counter() - started
        rows.append({"batch_size": bs, "items": len(items), "valid": ok, "seconds": round(seconds, 2),
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
