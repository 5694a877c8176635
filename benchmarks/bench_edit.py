"""Edit throughput against batch size: images/s through the real InstructPix2PixBackend.

    python benchmarks/bench_edit.py                                    # tiny InstructPix2Pix, 128 px, 4 steps
    python benchmarks/bench_edit.py --size real --device cuda          # timbrooks/instruct-pix2pix shapes, 512 px
    python benchmarks/bench_edit.py --size real --steps 20 --batch-sizes 1,4,8 --items 16
    python benchmarks/bench_edit.py --model /path/to/checkpoint --size real   # an existing checkpoint

Runs ``worker_edit.backends.instruct_pix2pix.InstructPix2PixBackend`` (the edit stage's
backend: same resizing, per-item seeded generators, grouping of same-size items, one
pipeline call per group of up to ``max_batch``) over the same items at each step count and
batch size, after warm-up calls at every batch size. Reports, per (steps, batch size):
images/s, seconds per image and the speed-up over batch 1 at the same step count.

``--size tiny`` builds the tiny random checkpoint of the test suite. ``--size real`` builds a
random-weight pipeline with the component shapes of timbrooks/instruct-pix2pix (Stable
Diffusion 1.5 UNet with 8 input channels, SD VAE, CLIP ViT-L/14 text encoder) from configs in
this file, with the offline CLIP tokenizer; nothing is downloaded. Random weights cost the
same arithmetic as trained ones, so timings hold; the images are noise (outputs that come out
NaN or black are counted in the ``ok`` column but still timed). ``--size real`` is meant for
a GPU: on a CPU one 512 px image at 20 steps takes minutes.

Every InstructPix2Pix step runs the UNet on three copies of each item (text+image,
image-only and unconditional guidance), so batch B is a UNet batch of 3B.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

PROMPTS = [
    "make it snowy",
    "turn the jacket into a long grey wool coat",
    "make the shirt blue",
    "put a hat on the person",
    "change the background to a sunny beach",
    "add sunglasses",
]

# Component configs of timbrooks/instruct-pix2pix (diffusers layout): a Stable Diffusion 1.5
# UNet whose first convolution takes 8 channels (4 noise latents + 4 image latents).
REAL_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 8,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
REAL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# CLIP ViT-L/14 text tower. The vocabulary keeps its released size (49408) so the embedding
# table weighs what it does in the real model; the offline tokenizer only uses the first ids.
REAL_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
REAL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}

DEFAULT_RESOLUTION: dict[str, int] = {"tiny": 128, "real": 512}
DEFAULT_STEPS: dict[str, str] = {"tiny": "4", "real": "20,50"}


def build_real(out: Path, *, init_device: str = "cpu", overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a random-weight InstructPix2Pix pipeline of the released shapes to ``out``.

    ``overrides`` replaces config keys per component (``{"unet": {"layers_per_block": 1}}``):
    only for checking this code path quickly on a small machine; timings need the defaults.
    Weights are stored in float16 (the backend casts to its dtype on load).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        UNet2DConditionModel,
    )
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from common.devkit.tinytok import write_clip_tokenizer_files
    from worker_edit.tiny import save_instruct_pix2pix

    overrides = overrides or {}
    out.mkdir(parents=True, exist_ok=True)
    tok_src = write_clip_tokenizer_files(out.parent / f"{out.name}-clip-tokenizer")
    # model_max_length must be set: without it the pipeline pads prompts to ~1e30 tokens.
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_src), model_max_length=77)
    text_cfg = {**REAL_TEXT, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, **overrides.get("text", {})}
    torch.manual_seed(0)
    with torch.device(init_device):
        unet = UNet2DConditionModel(**{**REAL_UNET, **overrides.get("unet", {})})
        vae = AutoencoderKL(**{**REAL_VAE, **overrides.get("vae", {})})
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting random weights needs no advice on float32 modules
    try:
        unet, vae, text_encoder = (_half(m) for m in (unet, vae, text_encoder))
    finally:
        diffusers_logging.set_verbosity(level)
    save_instruct_pix2pix(out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=EulerAncestralDiscreteScheduler(**REAL_SCHEDULER), tokenizer_src=tok_src)
    del unet, vae, text_encoder
    if init_device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _half(module: Any) -> Any:
    import torch

    return module.to(torch.float16)


def parameter_counts(model: Path) -> dict[str, float]:
    """Millions of parameters per component of a saved pipeline (from its safetensors headers)."""
    import struct

    counts: dict[str, float] = {}
    for component in ("unet", "vae", "text_encoder"):
        total = 0
        for path in (model / component).glob("*.safetensors"):
            with open(path, "rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            for name, meta in header.items():
                if name != "__metadata__":
                    n = 1
                    for d in meta["shape"]:
                        n *= d
                    total += n
        counts[component] = round(total / 1e6, 1)
    return counts


def make_items(n: int, resolution: int) -> list[Any]:
    from common.devkit import samples
    from worker_edit.backends.base import EditItem

    return [EditItem(key=f"bench-{i}", image=samples.person(i, size=(resolution, resolution)), garments=[],
                     prompt=PROMPTS[i % len(PROMPTS)], negative_prompt=None, seed=1000 + i) for i in range(n)]


def _quiet_progress_bars() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(DEFAULT_RESOLUTION), default="tiny")
    ap.add_argument("--model", help="use this checkpoint instead of building one")
    ap.add_argument("--resolution", type=int, default=None, help="square output side (default: 128 tiny, 512 real)")
    ap.add_argument("--steps", default=None, help="comma list of step counts (default: 4 tiny, 20,50 real)")
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--items", type=int, default=8, help="images per (steps, batch size)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--scheduler", default="euler_ancestral")
    ap.add_argument("--repeats", type=int, default=1, help="time each configuration this many times, keep the fastest")
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-edit-")  # own data dir, database and storage; none of the caller's settings

    import torch

    from worker_edit.backends.base import resolve_device
    from worker_edit.backends.instruct_pix2pix import InstructPix2PixBackend
    from worker_edit.tiny import build_tiny_instruct_pix2pix

    resolution: int = args.resolution or DEFAULT_RESOLUTION[args.size]
    steps_list = [int(x) for x in (args.steps or DEFAULT_STEPS[args.size]).split(",")]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    if resolution % 8 or resolution < 64:
        ap.error("--resolution must be a multiple of 8 and at least 64")
    if min(batch_sizes) < 1 or min(steps_list) < 1 or args.items < 1 or args.repeats < 1:
        ap.error("--batch-sizes, --steps, --items and --repeats must be positive")
    device = resolve_device(args.device)
    _quiet_progress_bars()

    with tempfile.TemporaryDirectory(prefix="bench-edit-") as tmp_name:
        tmp = Path(tmp_name)
        build_s = 0.0
        if args.model:
            model = Path(args.model)
        else:
            started = time.perf_counter()
            model = (build_tiny_instruct_pix2pix(tmp / "edit") if args.size == "tiny"
                     else build_real(tmp / "edit", init_device=device if device.startswith("cuda") else "cpu"))
            build_s = time.perf_counter() - started
        backend = InstructPix2PixBackend(model=str(model), steps=steps_list[0], scheduler=args.scheduler,
                                         max_side=resolution, device=args.device, dtype=args.dtype,
                                         max_batch=max(batch_sizes))
        started = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - started
        items = make_items(args.items, resolution)

        # Warm-up: one step at every batch size (kernel selection, allocator pools, first-call costs).
        backend.steps = 1
        for bs in batch_sizes:
            backend.max_batch = bs
            backend.run_batch(items[:bs] if bs <= len(items) else (items * bs)[:bs])
        _sync(device)

        rows: list[dict[str, Any]] = []
        for steps in steps_list:
            backend.steps = steps
            for bs in batch_sizes:
                backend.max_batch = bs
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                seconds = float("inf")
                for _ in range(args.repeats):  # keep the fastest pass: other load on the machine only adds time
                    ok = 0
                    started = time.perf_counter()
                    for i in range(0, len(items), bs):
                        ok += sum(out.error is None for out in backend.run_batch(items[i:i + bs]))
                    _sync(device)
                    seconds = min(seconds, time.perf_counter() - started)
                row: dict[str, Any] = {
                    "steps": steps, "batch_size": bs, "items": len(items), "ok": ok, "seconds": round(seconds, 3),
                    "images_per_s": round(len(items) / seconds, 4),
                    "s_per_image": round(seconds / len(items), 4),
                }
                if device.startswith("cuda"):
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                rows.append(row)

        params = backend.params()
        counts = parameter_counts(model)
    for row in rows:
        base = next(r for r in rows if r["steps"] == row["steps"] and r["batch_size"] == batch_sizes[0])
        row["vs_first_batch_size"] = round(row["images_per_s"] / base["images_per_s"], 3)

    ragged = [bs for bs in batch_sizes if args.items % bs]
    print(f"model: {args.size} ({'given' if args.model else 'random weights'}: {model}), parameters (M): "
          f"{json.dumps(counts)}")
    print(f"device {params['device']}, dtype {params['dtype']}, scheduler {params['scheduler_class']}, "
          f"{resolution}x{resolution}, {args.items} items, best of {args.repeats}, torch threads {torch.get_num_threads()}; "
          f"build {build_s:.1f} s, load {load_s:.1f} s")
    if ragged:
        print(f"note: {args.items} items do not divide into batches of {ragged}; the last batch is smaller")
    head = f"{'steps':>5} {'batch':>5} {'ok':>4} {'seconds':>9} {'images/s':>9} {'s/image':>9} {'vs batch ' + str(batch_sizes[0]):>11}"
    if device.startswith("cuda"):
        head += f" {'peak GiB':>9}"
    print(head)
    for r in rows:
        line = (f"{r['steps']:>5} {r['batch_size']:>5} {r['ok']:>4} {r['seconds']:>9.2f} {r['images_per_s']:>9.3f} "
                f"{r['s_per_image']:>9.3f} {r['vs_first_batch_size']:>10.2f}x")
        if "peak_gib" in r:
            line += f" {r['peak_gib']:>9.2f}"
        print(line)
    print(json.dumps({"benchmark": "edit", "size": args.size, "model": str(model) if args.model else None,
                      "device": params["device"], "dtype": params["dtype"], "resolution": resolution,
                      "repeats": args.repeats, "parameters_m": counts, "build_s": round(build_s, 2), "load_s": round(load_s, 2),
                      "rows": rows}))


if __name__ == "__main__":
    main()
