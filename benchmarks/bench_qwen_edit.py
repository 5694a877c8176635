"""Qwen-Image-Edit Plus in synthpipe: the qwen-image-edit-plus edit backend and an edit-plus LoRA train job, timed.

    python benchmarks/bench_qwen_edit.py                              # tiny random Qwen-Image-Edit Plus, CPU
    python benchmarks/bench_qwen_edit.py --size real --device cuda    # Qwen-Image-Edit-2509 shapes, random weights
    python benchmarks/bench_qwen_edit.py --size real --device cuda --text-layers 4   # a shallower text encoder

Two measurements, each through the project's own code, on one pipeline built once:

- **Edit**: ``worker_edit.backends.qwen_image_edit.QwenImageEditPlusBackend.run_batch`` on one
  try-on item (a person photo and ``--garments`` garment photos, true CFG with the default negative
  prompt), after a one-step warm-up: once at 1 step and once at ``--steps`` steps. Their
  difference gives seconds per denoising step; the 1-step call less one step is the fixed cost of
  a call (text encoding of the prompt with the reference images, VAE encode and decode); seconds
  per image at the default 40 steps (``edit.plus_steps``) is extrapolated from the two.
- **Edit-plus LoRA**: ``worker_train.trainers.qwen_edit_lora.QwenEditPlusLoRATrainer`` attached to
  the same pipeline, ``--lora-steps`` optimizer steps on ``--lora-examples`` examples (the
  rectified-flow loss, LoRA on the transformer's attention projections, gradient checkpointing on
  CUDA): seconds per optimizer step (median, the first step dropped) and peak memory.

``--size real`` builds random weights with the component shapes of Qwen/Qwen-Image-Edit-2509
(the 60-block, width-3072 Qwen-Image transformer, about 20.4B parameters; its 16-channel VAE; the
Qwen2.5-VL-7B text encoder with its vision tower, about 8.3B) directly on the device in bfloat16,
with the offline tokenizer and a processor at the released pixel bounds; nothing is downloaded or
written. Weights alone are about 58 GB. When the card has too little memory left for the full
text encoder after the transformer and VAE (or with ``--text-layers``), the text encoder is built
with fewer language-model layers: its width and vision tower stay, so the prompt's shapes are
real, and the JSON records ``text_encoder_layers`` (28 is the real depth). Text encoding happens
once per image, so the per-step figures do not depend on it.

``--size tiny`` uses the test suite's tiny checkpoint, loaded through the backend as a user's
checkpoint is, at small reference-image areas.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

PROMPT = "Dress the person in Picture 1 in the jacket from Picture 2; keep the face, pose and background"
DEFAULT_STEPS = 40  #: edit.plus_steps
REAL_TEXT_LAYERS = 28
#: Qwen2.5-VL-7B's text model and vision tower (the text encoder of Qwen-Image-Edit)
REAL_TEXT: dict[str, Any] = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": REAL_TEXT_LAYERS,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
}
REAL_VISION: dict[str, Any] = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                               "out_hidden_size": 3584}
#: Qwen-Image-Edit-2509's scheduler config
REAL_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
TEXT_ENCODER_GIB = 16.6  #: the full text encoder's bfloat16 weights
HEADROOM_GIB = 12.0  #: activations, the VAE at 1024 px, the allocator


def build_real_pipeline(device: str, text_layers: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A ``QwenImageEditPlusPipeline`` with Qwen-Image-Edit-2509 shapes and random bf16 weights
    made on ``device``; returns it and what was built (parameters, text encoder depth)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from realsize import free_gib, on_device, param_billions
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from common.devkit.tinytok import build_qwen_tokenizer
    from worker_edit.backends.qwen_image_edit import _image_only_processor_class

    tokenizer = build_qwen_tokenizer(None)
    ids = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # as released
    processor = _image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=getattr(tokenizer, "chat_template", None))
    torch.manual_seed(0)
    with on_device(device):
        transformer = QwenImageTransformer2DModel()  # the class defaults are Qwen-Image's shapes
        vae = AutoencoderKLQwenImage()
    free = free_gib(device)
    note = None
    if text_layers is None and free is not None and free < TEXT_ENCODER_GIB + HEADROOM_GIB:
        text_layers = 4
        note = (f"{free} GiB free after the transformer and VAE, the full text encoder needs about "
                f"{TEXT_ENCODER_GIB} GiB + {HEADROOM_GIB} GiB headroom: text encoder built with {text_layers} of "
                f"{REAL_TEXT_LAYERS} language-model layers")
    text = {**REAL_TEXT, "num_hidden_layers": text_layers or REAL_TEXT_LAYERS,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=REAL_VISION, vision_start_token_id=ids[0],
                              vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3])
    with on_device(device):
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    parts: tuple[Any, ...] = (transformer, vae, text_encoder)
    for part in parts:
        part.eval()
    pipe: Any = QwenImageEditPlusPipeline(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     processor=processor,
                                     scheduler=FlowMatchEulerDiscreteScheduler(**REAL_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    built = {"transformer_params_b": param_billions(transformer), "text_encoder_params_b": param_billions(text_encoder),
             "vae_params_b": param_billions(vae), "text_encoder_layers": text["num_hidden_layers"],
             "text_encoder_real_layers": REAL_TEXT_LAYERS, "text_encoder_note": note}
    return pipe, built


def _items(n: int, garments: int, side: int) -> list[Any]:
    from common.devkit import samples
    from worker_edit.backends.base import EditItem

    return [EditItem(key=f"plus-{i}", image=samples.person(i, size=(side * 3 // 4, side)),
                     garments=[samples.garment(i + g, size=(side * 3 // 4, side * 3 // 4)) for g in range(garments)],
                     prompt=PROMPT, negative_prompt=None, seed=100 + i) for i in range(n)]


def bench_edit(args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    from realsize import peak_gib, reset_peak, sync

    item = _items(1, args.garments, args.photo_side)[0]

    def one(steps: int) -> tuple[float, Any]:
        backend.steps = steps
        sync(args.device)
        started = time.perf_counter()
        out = backend.run_batch([item])[0]
        sync(args.device)
        return time.perf_counter() - started, out

    one(1)  # warm-up: kernels, allocator
    reset_peak(args.device)
    t1, _ = one(1)
    tn, out = one(args.steps)
    per_step = (tn - t1) / (args.steps - 1) if args.steps > 1 else t1
    fixed = max(t1 - per_step, 0.0)
    return {"output_side": args.side, "garments": args.garments, "photo_side": args.photo_side,
            "steps_timed": [1, args.steps], "seconds": [round(t1, 3), round(tn, 3)],
            "s_per_step": round(per_step, 4), "fixed_s_per_image": round(fixed, 3),
            "default_steps": DEFAULT_STEPS, "s_per_image_at_default_steps": round(fixed + DEFAULT_STEPS * per_step, 2),
            "ok": out.error is None, "error": out.error, "output_shape": list(getattr(out.image, "size", ())),
            "peak_gib": peak_gib(args.device)}


def bench_lora(args: argparse.Namespace, pipe: Any, areas: tuple[int | None, int | None], work: Path) -> dict[str, Any]:
    from PIL import ImageOps
    from realsize import time_training

    from worker_train.trainers.loop import Hyper
    from worker_train.trainers.qwen_edit_lora import PlusExample, QwenEditPlusLoRATrainer

    cuda = args.device.startswith("cuda")
    hp = Hyper(rank=args.lora_rank, lr=1e-4, steps=args.lora_steps, batch_size=args.lora_batch,
               resolution=args.lora_resolution, checkpoint_every=args.lora_steps + 1, device=args.device,
               dtype="bfloat16" if cuda else "float32", optimizer="adamw", conditioning_dropout=0.0)
    trainer = QwenEditPlusLoRATrainer("random Qwen-Image-Edit-2509 shapes" if args.size == "real" else "tiny", hp,
                                      vae_image_area=areas[0], condition_image_area=areas[1])
    trainer.attach(pipe)
    items = _items(args.lora_examples, args.garments, args.photo_side)
    examples = [PlusExample([it.image, *it.garments], ImageOps.mirror(it.image), it.prompt) for it in items]
    out = time_training(trainer, examples, work / "checkpoints", args.device)
    out.update(resolution=args.lora_resolution, rank=args.lora_rank, batch_size=args.lora_batch,
               examples=len(examples), optimizer="adamw", gradient_checkpointing=cuda)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "real"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="the longer timed call's steps (default 4 real, 2 tiny)")
    p.add_argument("--side", type=int, default=None, help="output's longest side (default 512 = edit.max_side; 64 tiny)")
    p.add_argument("--photo-side", type=int, default=None, help="long side of the input photos (default 1024; 128 tiny)")
    p.add_argument("--garments", type=int, default=1, help="garment photos besides the person (1 or 2)")
    p.add_argument("--text-layers", type=int, default=None, help="real: language-model layers of the text encoder")
    p.add_argument("--lora-steps", type=int, default=4)
    p.add_argument("--lora-examples", type=int, default=2)
    p.add_argument("--lora-batch", type=int, default=2, help="train.batch_size")
    p.add_argument("--lora-rank", type=int, default=4, help="train.edit_rank")
    p.add_argument("--lora-resolution", type=int, default=None, help="default 256 = train.edit_resolution; 64 tiny")
    p.add_argument("--skip", choices=["edit", "lora"], default=None)
    args = p.parse_args()
    from isolation import isolate

    isolate("bench-qwen-edit-")  # own data dir, database and storage; none of the caller's settings
    real = args.size == "real"
    args.steps = args.steps or (4 if real else 2)
    args.side = args.side or (512 if real else 64)
    args.photo_side = args.photo_side or (1024 if real else 128)
    args.lora_resolution = args.lora_resolution or (256 if real else 64)
    if args.steps < 2 or args.garments not in (1, 2):
        p.error("--steps must be at least 2 and --garments 1 or 2")

    import torch
    from diffusers.utils import logging as diffusers_logging

    from worker_edit.backends.qwen_image_edit import QwenImageEditPlusBackend

    diffusers_logging.disable_progress_bar()
    report: dict[str, Any] = {"benchmark": "qwen-image-edit-plus", "size": args.size, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="bench-qwen-edit-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        if real:
            areas: tuple[int | None, int | None] = (None, None)  # the pipeline's native 1024² and 384²
            pipe, built = build_real_pipeline(args.device, args.text_layers)
            backend = QwenImageEditPlusBackend(model="random Qwen-Image-Edit-2509 shapes", steps=args.steps,
                                               max_side=args.side, device=args.device, dtype="bfloat16")
            backend.pipe, backend._device, backend._dtype = pipe, args.device, torch.bfloat16
            backend._module = importlib.import_module(type(pipe).__call__.__module__)
        else:
            from common.devkit.tinymodels import build_one

            areas = (128 * 128, 112 * 112)  # tiny_run_settings: the tiny VAE at 1024² takes ~40 s on a CPU
            backend = QwenImageEditPlusBackend(model=str(build_one("edit-plus", work)), steps=args.steps,
                                               max_side=args.side, device=args.device, vae_image_area=areas[0],
                                               condition_image_area=areas[1])
            backend.load()
            pipe = backend.pipe
            built = {"text_encoder_layers": pipe.text_encoder.config.text_config.num_hidden_layers}
        report["model"] = {**built, "dtype": str(backend._dtype).removeprefix("torch."),
                           "vae_image_area": areas[0] or "native 1024*1024",
                           "condition_image_area": areas[1] or "native 384*384",
                           "build_s": round(time.perf_counter() - started, 1)}
        if args.skip != "edit":
            report["edit"] = edit = bench_edit(args, backend)
            print(f"edit: {edit['s_per_step']} s/step, {edit['s_per_image_at_default_steps']} s/image at "
                  f"{DEFAULT_STEPS} steps, peak {edit['peak_gib']} GiB", file=sys.stderr)
        if args.skip != "lora":
            report["lora"] = lora = bench_lora(args, pipe, areas, work)
            print(f"edit-plus LoRA: {lora['s_per_step']} s/step at {lora['resolution']} px, batch "
                  f"{lora['batch_size']}, peak {lora['peak_gib']} GiB", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
