"""Scorer throughput against batch size: scores/s for each scorer of the score stage.

    python benchmarks/bench_score.py                          # tiny CLIP/DINOv2, CPU
    python benchmarks/bench_score.py --size real --device cuda # random weights at CLIP ViT-L/14 and DINOv2-base size

Each scorer is the real backend (same preprocessing, same batching) over the same pairs at each
batch size, after one warm-up batch: scikit-image's astronaut (512x512) against a relit copy,
with one garment photo. ``change`` and ``identity`` run no network and do not batch on the
device (identity is dlib's HOG detector + ResNet descriptor, one photo at a time), so their
rate barely moves with the batch size; CLIP, DINOv2 and garment run one forward pass per batch.
Random weights are fine for timing; ``--size real`` builds random checkpoints of the released
shapes (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_real_size(out: Path) -> dict[str, Path]:
    """Random-weight CLIP ViT-L/14 and DINOv2-base (their released shapes), with the offline
    tokenizer and the tiny checkpoints' preprocessor configs at 224 px."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    from worker_score.tiny import build_tiny_clip, build_tiny_dinov2

    paths = {"clip": build_tiny_clip(out / "clip"), "dino": build_tiny_dinov2(out / "dino")}
    torch.manual_seed(0)
    tokens = json.loads((paths["clip"] / "config.json").read_text())["text_config"]["vocab_size"]
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": tokens, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
        projection_dim=768))
    clip.save_pretrained(paths["clip"])
    Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518,
                             patch_size=14)).save_pretrained(paths["dino"])
    for name in ("clip", "dino"):  # 224 px like the released processors
        cfg_path = paths[name] / "preprocessor_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["size"], cfg["crop_size"] = {"shortest_edge": 256 if name == "dino" else 224}, {"height": 224, "width": 224}
        cfg_path.write_text(json.dumps(cfg))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--scorers", default="change,identity,clip,dino,garment")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-score-")  # own data dir, database and storage; none of the caller's settings

    import torch
    from PIL import Image, ImageEnhance
    from skimage import data

    from common.devkit.tinymodels import build_one
    from common.domain.scoring import ScoreItem
    from worker_score.backends import get_scorer

    workdir = Path(tempfile.mkdtemp(prefix="bench-score-"))
    paths = build_real_size(workdir) if args.size == "real" else {n: build_one(n, workdir) for n in ("clip", "dino")}
    photo = Image.fromarray(data.astronaut())
    relit = ImageEnhance.Brightness(photo).enhance(0.6)
    garment = photo.crop((150, 300, 400, 512))
    items = [ScoreItem(f"b{i}", photo, relit, prompt="make the photo darker", garments=[garment])
             for i in range(args.items)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    model_kw = {"device": args.device}
    options = {
        "change": {}, "identity": {"upsample": 1},
        "clip": {"model": str(paths["clip"]), **model_kw}, "dino": {"model": str(paths["dino"]), **model_kw},
        "garment": {"model": str(paths["dino"]), "upsample": 1, **model_kw},
    }
    names = args.scorers.split(",")
    rates: dict[str, dict[int, float]] = {}
    for name in names:
        rates[name] = {}
        for b in batch_sizes:
            kw = dict(options[name])
            if name in ("clip", "dino", "garment"):
                kw["max_batch"] = b
            scorer = get_scorer(name, **kw)
            scorer.load()
            scorer.run_batch(items[:b])  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            outs = []
            for i in range(0, len(items), b):
                outs += scorer.run_batch(items[i:i + b])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            assert all(o.error is None for o in outs), [o.error for o in outs if o.error]
            rates[name][b] = len(items) / seconds
            scorer.unload()
            print(f"{name} batch {b}: {rates[name][b]:.1f} scores/s", file=sys.stderr)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nscores/s, {args.items} pairs of 512x512 photos, {args.size} CLIP/DINOv2, {device}\n")
    print("| scorer | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |")
    print("|---|" + "---|" * len(batch_sizes))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{rates[name][b]:.1f}" for b in batch_sizes) + " |")
    print(json.dumps({"benchmark": "score", "size": args.size, "device": device, "items": args.items,
                      "rows": [{"scorer": name, "batch_size": b, "scores_per_s": round(rates[name][b], 2)}
                               for name in names for b in batch_sizes]}))


if __name__ == "__main__":
    main()
