"""FLUX in synthpipe: the flux-kontext edit backend and a character LoRA train job, timed.

    python benchmarks/bench_flux.py                                  # tiny random FLUX, 64 px, CPU
    python benchmarks/bench_flux.py --size real --device cuda        # FLUX.1-sized random weights, 1024 px
    python benchmarks/bench_flux.py --size real --device cuda --lora-steps 50 --lora-resolution 512

Two measurements, each through the project's own code:

- **Kontext**: ``worker_edit.backends.flux_kontext.FluxKontextBackend.run_batch`` over the same
  items at each batch size (after a warm-up call per batch size): images/s, seconds per image,
  speed-up over batch 1 and, on CUDA, peak memory.
  With more than one step, one item is also run at 1 step: the difference to batch 1 at
  ``--steps`` gives seconds per denoising step, and seconds per image at the default 28 steps
  (``edit.kontext_steps``) is extrapolated (``kontext_per_step``).
- **Character LoRA**: ``worker_train.trainers.character_lora.CharacterLoRATrainer`` for
  ``--lora-steps`` optimizer steps on ``--lora-examples`` images (the rectified-flow loss, LoRA on
  the transformer's attention projections): seconds per optimizer step (median, the first step
  dropped), peak memory, and the first and last step's loss. With ``--size real`` it trains the
  Kontext run's random weights (the same parts as a ``FluxPipeline``), built once.

``--size tiny`` uses the test suite's tiny checkpoints. ``--size real`` builds random weights
with the component shapes of FLUX.1-dev / FLUX.1-Kontext-dev (a 19 + 38 block transformer of
width 3072, T5-XXL encoder, CLIP ViT-L text encoder, the 16-channel VAE) directly on the device
in bfloat16 and hands the pipeline to the backend and the trainer; nothing is downloaded or
written to disk. Random weights cost the same arithmetic as trained ones, so timings hold; the
images are noise. ``--size real`` is meant for a GPU with about 80 GB or more.
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

DEFAULT_KONTEXT_STEPS = 28  #: edit.kontext_steps
FLUX_PARTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer",
              "image_encoder", "feature_extractor")
PROMPTS = ["make it snowy", "change the background to a sunny beach", "golden hour light", "a watercolour painting"]

# Component shapes of black-forest-labs/FLUX.1-dev (Kontext-dev has the same).
REAL_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
REAL_CLIP: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu",
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
}
REAL_T5: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1,
}
REAL_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024, "use_quant_conv": False,
    "use_post_quant_conv": False, "shift_factor": 0.1159, "scaling_factor": 0.3611,
}


def build_real_pipeline(cls: Any, device: str, work: Path) -> Any:
    """A FLUX pipeline of class ``cls`` with FLUX.1-sized random bf16 weights made on ``device``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from worker_edit.tiny import _tiny_t5_tokenizer, write_clip_tokenizer_files

    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer_files(work / "clip-tok")), model_max_length=77)
    tokenizer_2 = _tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            parts = {
                "transformer": FluxTransformer2DModel(**REAL_TRANSFORMER),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**REAL_CLIP)),
                "text_encoder_2": T5EncoderModel(T5Config(**REAL_T5)),
                "vae": AutoencoderKL(**REAL_VAE),
            }
    finally:
        torch.set_default_dtype(previous)
    for part in parts.values():
        part.to(device=device, dtype=torch.bfloat16).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = cls(scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2, image_encoder=None,
               feature_extractor=None, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _peak_gb(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _images(n: int, side: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def bench_kontext(args: argparse.Namespace, work: Path, device: str) -> list[dict[str, Any]]:
    import torch
    from diffusers import FluxKontextPipeline

    from worker_edit.backends.base import EditItem
    from worker_edit.backends.flux_kontext import FluxKontextBackend

    if args.size == "real":
        backend = FluxKontextBackend(model="random FLUX.1-Kontext-dev shapes", steps=args.steps, max_side=args.side,
                                     max_batch=max(args.batch_sizes), device=device, dtype="bfloat16")
        backend.pipe = build_real_pipeline(FluxKontextPipeline, device, work)  # in place of from_pretrained
        backend._device, backend._dtype = device, torch.bfloat16
    else:
        from worker_edit.tiny import build_tiny_flux_kontext

        backend = FluxKontextBackend(model=str(build_tiny_flux_kontext(work / "kontext")), steps=args.steps,
                                     max_side=args.side, max_batch=max(args.batch_sizes), device=device,
                                     max_sequence_length=64)
        backend.load()
    images = _images(args.items, args.side)
    items = [EditItem(key=f"i{i}", image=im, prompt=PROMPTS[i % len(PROMPTS)], seed=i) for i, im in enumerate(images)]
    rows: list[dict[str, Any]] = []
    for size in args.batch_sizes:
        backend.max_batch = size
        backend.run_batch(items[:size])  # warm-up at this batch size
        _reset_peak(device)
        started = time.perf_counter()
        outs = backend.run_batch(items)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        rows.append({"batch_size": size, "items": len(items), "ok": sum(o.error is None for o in outs),
                     "images_per_s": round(len(items) / seconds, 3), "s_per_image": round(seconds / len(items), 3),
                     "peak_gb": _peak_gb(device)})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base, 2)
    if args.steps > 1:  # one item at 1 step: with batch 1 at --steps, the cost of a step and of a call
        backend.max_batch, backend.steps = 1, 1
        _reset_peak(device)
        started = time.perf_counter()
        backend.run_batch(items[:1])
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        one_step = time.perf_counter() - started
        backend.steps = args.steps
        at_steps = next(r for r in rows if r["batch_size"] == 1)["s_per_image"] if 1 in args.batch_sizes else None
        if at_steps is not None:
            per_step = (at_steps - one_step) / (args.steps - 1)
            fixed = max(one_step - per_step, 0.0)
            args.kontext_per_step = {"s_per_step": round(per_step, 4), "fixed_s_per_image": round(fixed, 3),
                                     "default_steps": DEFAULT_KONTEXT_STEPS,
                                     "s_per_image_at_default_steps": round(fixed + DEFAULT_KONTEXT_STEPS * per_step, 2)}
    if args.size == "real" and args.skip != "lora":
        args.real_pipe = backend.pipe  # the LoRA trains the same random weights (FluxPipeline of these parts)
        backend.pipe = None
    backend.unload()
    return rows


def bench_lora(args: argparse.Namespace, work: Path, device: str) -> dict[str, Any]:
    from diffusers import FluxPipeline

    from worker_train.trainers.character_lora import CharacterExample, CharacterLoRATrainer
    from worker_train.trainers.loop import Hyper

    hp = Hyper(rank=args.lora_rank, lr=args.lora_lr, steps=args.lora_steps, batch_size=args.lora_batch,
               resolution=args.lora_resolution, checkpoint_every=args.lora_steps + 1, device=device,
               dtype="bfloat16" if args.size == "real" or device.startswith("cuda") else "float32", optimizer="adamw",
               conditioning_dropout=0.0)
    if args.size == "real":
        trainer = CharacterLoRATrainer("random FLUX.1-dev shapes", hp, trigger="sks")
        kontext = getattr(args, "real_pipe", None)
        args.real_pipe = None
        trainer.attach(FluxPipeline(**{k: v for k, v in kontext.components.items() if k in FLUX_PARTS})
                       if kontext is not None else build_real_pipeline(FluxPipeline, device, work))
    else:
        from worker_edit.tiny import build_tiny_flux

        trainer = CharacterLoRATrainer(str(build_tiny_flux(work / "flux")), hp, trigger="sks")
    examples = [CharacterExample(im, "a photo of sks person") for im in _images(args.lora_examples,
                                                                                 args.lora_resolution)]
    from realsize import time_training

    timed = time_training(trainer, examples, work / "checkpoints", device)
    out = {"steps": timed["steps"], "examples": len(examples), "resolution": args.lora_resolution,
           "rank": args.lora_rank, "batch_size": args.lora_batch,
           "trainable_params": int(timed["trainable_params_m"] * 1e6),
           "s_per_step": timed["s_per_step"], "wall_seconds_with_encoding": timed["train_call_s"],
           "peak_gb": timed["peak_gib"], "loss_first": timed["loss_first"], "loss_last": timed["loss_last"]}
    trainer.unload()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "real"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="Kontext steps (default: 28 real, 4 tiny)")
    p.add_argument("--side", type=int, default=None, help="Kontext image side (default: 1024 real, 64 tiny)")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--lora-steps", type=int, default=50)
    p.add_argument("--lora-examples", type=int, default=8)
    p.add_argument("--lora-batch", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-lr", type=float, default=1e-4)
    p.add_argument("--lora-resolution", type=int, default=None, help="default: 512 real, 64 tiny")
    p.add_argument("--skip", choices=["kontext", "lora"], default=None)
    args = p.parse_args()
    from isolation import isolate

    isolate("bench-flux-")  # own data dir, database and storage; none of the caller's settings
    real = args.size == "real"
    args.steps = args.steps or (28 if real else 4)
    args.side = args.side or (1024 if real else 64)
    args.lora_resolution = args.lora_resolution or (512 if real else 64)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report: dict[str, Any] = {"size": args.size, "device": args.device, "kontext_steps": args.steps,
                              "side": args.side}
    with tempfile.TemporaryDirectory(prefix="bench-flux-") as tmp:
        if args.skip != "kontext":
            report["kontext"] = bench_kontext(args, Path(tmp), args.device)
            if getattr(args, "kontext_per_step", None):
                report["kontext_per_step"] = args.kontext_per_step
            for row in report["kontext"]:
                print(f"kontext batch {row['batch_size']}: {row['images_per_s']} img/s, {row['s_per_image']} s/img, "
                      f"x{row['speedup']}, peak {row['peak_gb']} GB ({row['ok']}/{row['items']} ok)", file=sys.stderr)
        if args.skip != "lora":
            report["lora"] = lora = bench_lora(args, Path(tmp), args.device)
            print(f"character LoRA: {lora['steps']} steps at {lora['resolution']} px, {lora['s_per_step']} s/step, "
                  f"peak {lora['peak_gb']} GB, loss {lora['loss_first']} -> {lora['loss_last']}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
