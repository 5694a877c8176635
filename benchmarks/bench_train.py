"""Train throughput against batch size and LoRA rank: optimizer steps/s of the edit LoRA
trainer (InstructPix2Pix UNet) and the VL LoRA trainer (Qwen2.5-VL), tiny models on CPU.

    python benchmarks/bench_train.py                                  # both targets, batch 1,2,4, rank 4,16
    python benchmarks/bench_train.py --target edit --batch-sizes 1,2,4,8 --ranks 4,16,64 --steps 20
    python benchmarks/bench_train.py --json

Runs ``worker_train.trainers`` exactly as a train job does (frozen encoders once, then
``--steps`` optimizer steps with checkpointing off) after a warm-up of 2 steps per point, on
random images at ``--resolution``. Reports steps/s, examples/s and the first/last loss. The
tiny models are the test suite's, built offline; nothing is downloaded.

``--size real --device cuda`` trains random weights of the released shapes instead: the
InstructPix2Pix checkpoint of ``bench_edit.py --size real`` (Stable Diffusion 1.5 UNet) and a
Qwen2.5-VL-7B built on the device (``realsize.random_vl_weights``), in bfloat16 with plain AdamW
and no 4-bit quantization (bitsandbytes is not carried to the GPU machine); one train call per
point, seconds per step the median after the first step, and peak memory.
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


def _images(n: int, side: int, seed: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def _trainer(target: str, model: Path, hp: Any, n: int, side: int) -> tuple[Any, list[Any]]:
    if target == "edit":
        from worker_train.trainers.edit_lora import EditExample, EditLoRATrainer

        ins, outs = _images(n, side, 1), _images(n, side, 2)
        return EditLoRATrainer(str(model), hp), [EditExample(a, b, "make the jacket red") for a, b in zip(ins, outs,
                                                                                                        strict=True)]
    from worker_train.trainers.vl_lora import VLExample, VLLoRATrainer

    answer = json.dumps({"edit_prompt": "make the jacket red", "confidence": 0.9, "feasibility": "high"})
    return VLLoRATrainer(str(model), hp), [VLExample([im], "system", "describe the edit", answer)
                                           for im in _images(n, side, 3)]


def measure(target: str, model: Path, batch: int, rank: int, steps: int, side: int) -> dict[str, Any]:
    from worker_train.trainers.loop import Hyper

    def hp(n_steps: int) -> Hyper:
        return Hyper(rank=rank, lr=1e-3, steps=n_steps, batch_size=batch, resolution=side,
                     checkpoint_every=10**9, device="cpu", quantization="none")

    trainer, examples = _trainer(target, model, hp(2), max(8, batch), side)
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(examples, Path(tmp) / "warm")  # loads, encodes and warms up
        trainer.hp = hp(steps)
        started = time.perf_counter()
        result = trainer.train(examples, Path(tmp) / "run")
        wall = time.perf_counter() - started
    trainer.unload()
    # wall includes re-encoding the examples and the two fixed-batch losses; result.seconds is the loop
    return {"target": target, "batch_size": batch, "rank": rank, "steps": steps, "resolution": side,
            "steps_per_s": round(steps / result.seconds, 2), "examples_per_s": round(steps * batch / result.seconds, 2),
            "loop_seconds": result.seconds, "wall_seconds": round(wall, 2),
            "loss_first": result.loss_curve[0][1], "loss_last": result.loss_curve[-1][1]}


def measure_real(target: str, model: Path, batch: int, rank: int, steps: int, side: int, device: str,
                 work: Path) -> dict[str, Any]:
    """Real shapes: one train call (the first step, with its warm-up, left out of the step time)."""
    from realsize import random_vl_weights, time_training

    from worker_train.trainers.loop import Hyper

    hp = Hyper(rank=rank, lr=1e-4, steps=steps, batch_size=batch, resolution=side, checkpoint_every=10**9,
               device=device, dtype="bfloat16" if device.startswith("cuda") else "float32", optimizer="adamw",
               quantization="none", gradient_checkpointing=True)
    trainer, examples = _trainer(target, model, hp, max(4, batch), side)
    if target == "vl":  # random 7B weights built on the device, not read from disk
        with random_vl_weights(device):
            trainer.load()
    timed = time_training(trainer, examples, work / f"{target}-run", device)
    trainer.unload()
    return {"target": target, "batch_size": batch, "rank": rank, "resolution": side, "optimizer": "adamw",
            "quantization": "none", "dtype": hp.dtype, **timed,
            "steps_per_s": round(1 / timed["s_per_step"], 3) if timed["s_per_step"] else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=["edit", "vl", "both"], default="both")
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--ranks", default="4,16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.add_argument("--size", choices=["tiny", "real"], default="tiny",
                   help="real: random weights of timbrooks/instruct-pix2pix and Qwen2.5-VL-7B shapes (a GPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from isolation import isolate

    isolate("bench-train-")  # own data dir, database and storage; none of the caller's settings
    import torch

    from common.devkit.tinymodels import build_one

    real = args.size == "real"
    if not real:
        torch.set_num_threads(1)
    targets = ["edit", "vl"] if args.target == "both" else [args.target]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            if real:
                from bench_edit import build_real
                from bench_vl import random_checkpoint

                model = (build_real(Path(tmp) / "edit", init_device=args.device) if target == "edit"
                         else random_checkpoint("7b", Path(tmp) / "vl"))
            else:
                model = build_one(target, Path(tmp))
            side = args.resolution if target == "edit" else max(56, args.resolution)
            for rank in map(int, args.ranks.split(",")):
                for batch in map(int, args.batch_sizes.split(",")):
                    rows.append(measure_real(target, model, batch, rank, args.steps, side, args.device, Path(tmp))
                                if real else measure(target, model, batch, rank, args.steps, side))
                    if not args.json:
                        r = rows[-1]
                        print(f"{target:4} rank {rank:3} batch {batch:2}: {r['steps_per_s']} steps/s "
                              f"loss {r['loss_first']:.3f}->{r['loss_last']:.3f}", flush=True)
    if args.json:
        print(json.dumps({"size": args.size, "device": args.device, "threads": None if real else 1, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
