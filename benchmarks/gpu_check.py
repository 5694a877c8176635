"""The GPU check: the CUDA-path checks and the real-size benchmarks (random weights), one JSON.

    python benchmarks/gpu_check.py --out gpu.json             # a machine with a card (benchmarks/gpu.sh)
    python benchmarks/gpu_check.py --dry-run --out dry.json   # any machine: CPU, tiny sizes, every part

Each section runs in a child process under its own time limit, so a hang or a crash costs that
section only; the JSON is rewritten after every section (what finished survives a kill).

Sections: ``checks`` (bf16 loading, ``--gpu`` pinning, schema-constrained decoding on the card,
batch equals single for the VL model and the editor), ``vl`` (analyses/s at batch 1/8/32,
Qwen2.5-VL-7B shape), ``edit`` (images/s at 20 steps and 512², InstructPix2Pix shape, peak
memory), ``score`` (CLIP ViT-L/14 and DINOv2-L shapes, items/s), ``overlap`` (model-busy share
of a stage's wall time, serial and overlapped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

#: section -> seconds it may take (real run; the whole must stay under 8 minutes)
BUDGET = {"checks": 80, "vl": 190, "edit": 90, "score": 45, "overlap": 60}
DRY_BUDGET = {"checks": 240, "vl": 120, "edit": 120, "score": 90, "overlap": 120}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu-figures.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU and tiny sizes: check the script itself quickly")
    ap.add_argument("--sections", default=",".join(BUDGET))
    ap.add_argument("--section", help=argparse.SUPPRESS)  # a child process runs one section
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if args.section:
        result = SECTIONS[args.section](device, args.dry_run)
        sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")
        return 0
    budget = DRY_BUDGET if args.dry_run else BUDGET
    out = Path(args.out)
    figures: dict[str, Any] = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "environment": environment()}
    total = time.perf_counter()
    for name in args.sections.split(","):
        started = time.perf_counter()
        cmd = [sys.executable, __file__, "--section", name, *(["--dry-run"] if args.dry_run else [])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget[name], cwd=ROOT,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode == 0 and lines:
                figures[name] = json.loads(lines[-1].removeprefix("RESULT "))
            else:
                figures[name] = {"error": f"exit {done.returncode}", "log": (done.stdout + done.stderr)[-3000:]}
        except subprocess.TimeoutExpired as exc:
            log = (exc.stdout or b"") + (exc.stderr or b"")
            figures[name] = {"error": f"timed out after {budget[name]} s",
                             "log": (log.decode(errors="replace") if isinstance(log, bytes) else str(log))[-3000:]}
        figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
        figures["total_seconds"] = round(time.perf_counter() - total, 1)
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"{name}: {'error: ' + figures[name]['error'] if 'error' in figures[name] else 'ok'} "
              f"({figures[name]['section_seconds']} s)", file=sys.stderr)
    failed = [k for k in args.sections.split(",") if "error" in figures[k] or figures[k].get("passed") is False]
    print(f"figures in {out}; {'all sections ok' if not failed else 'not ok: ' + ', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def environment() -> dict[str, Any]:
    from importlib import metadata

    env: dict[str, Any] = {"python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "diffusers", "accelerate", "xgrammar", "peft", "nvidia-ml-py"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    try:
        import torch

        env["cuda"] = torch.version.cuda
        env["cards"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # torch missing or broken: the sections will say how
        env["torch_error"] = str(exc)
    return env


def _peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _vl_items(n: int) -> list[Any]:
    from common.core.prompts import render_for
    from common.devkit import samples
    from common.domain.schemas import analysis_json_schema
    from worker_vl.backends.base import VLItem

    keywords = {"occasion": "office day", "season": "autumn", "setting": "studio", "lighting": "soft daylight",
                "style": "smart casual"}
    system, user = render_for("tryon", "v1", keywords=keywords, variation=None, n_images=2)
    return [VLItem(key=f"check-{i}", images=[samples.person(i), samples.garment(i)], system_prompt=system,
                   user_prompt=user, json_schema=analysis_json_schema("tryon")) for i in range(n)]


# --- sections ---------------------------------------------------------------------------------------


def section_checks(device: str, dry: bool) -> dict[str, Any]:
    """The CUDA paths, on tiny models: each check says passed and what it saw."""
    import numpy as np
    import torch
    from bench_edit import make_items

    from common.devkit.tinymodels import build_one
    from worker_edit.backends.instruct_pix2pix import InstructPix2PixBackend
    from worker_vl.backends.qwen import QwenVLBackend
    from worker_vl.service import parse_analysis

    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    vl_dir, edit_dir = build_one("vl", tmp), build_one("edit", tmp)
    out: dict[str, Any] = {}

    # bf16 loading: parameters land on the device in bfloat16
    vl = QwenVLBackend(model=str(vl_dir), device=device, dtype="bfloat16", max_new_tokens=2048,
                       min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    vl.load()
    p = next(vl.model.parameters())
    out["bf16_vl"] = {"passed": p.dtype == torch.bfloat16 and p.device.type == device.split(":")[0],
                      "dtype": str(p.dtype), "device": str(p.device)}
    # constrained decoding on the device: every output parses and validates against the schema
    items = _vl_items(4)
    outputs = vl.run_batch(items[:2])
    valid = 0
    for o in outputs:
        try:
            parse_analysis("tryon", o.raw_text)
            valid += o.error is None
        except Exception:
            pass
    out["constrained_decoding"] = {"passed": valid == len(outputs), "valid": valid, "items": len(outputs)}
    vl.unload()

    # batch equals single (greedy, float32: the batching, not the number format, is under test)
    vl32 = QwenVLBackend(model=str(vl_dir), device=device, dtype="float32", max_new_tokens=48,
                         min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    vl32.load()
    batched = [o.raw_text for o in vl32.run_batch(items)]
    single = [vl32.run_batch([it])[0].raw_text for it in items]
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    out["vl_batch_equals_single"] = {"passed": same == len(items), "equal": same, "items": len(items)}
    vl32.unload()

    edit = InstructPix2PixBackend(model=str(edit_dir), steps=4, max_side=64, device=device, dtype="bfloat16",
                                  max_batch=2)
    edit.load()
    unet_dtype = next(edit.pipe.unet.parameters()).dtype
    out["bf16_edit"] = {"passed": unet_dtype == torch.bfloat16, "dtype": str(unet_dtype)}
    edit.unload()
    edit32 = InstructPix2PixBackend(model=str(edit_dir), steps=4, max_side=64, device=device, dtype="float32",
                                    max_batch=2)
    edit32.load()
    eitems = make_items(2, 64)
    pair = [np.asarray(o.image, dtype=np.int16) for o in edit32.run_batch(eitems)]
    alone = [np.asarray(edit32.run_batch([it])[0].image, dtype=np.int16) for it in eitems]
    diff = max(int(np.abs(a - b).max()) for a, b in zip(pair, alone, strict=True))
    out["edit_batch_equals_single"] = {"passed": diff <= 2, "max_pixel_difference": diff}
    edit32.unload()
    out["gpu_pinning"] = _pinning(device)
    out["passed"] = all(v.get("passed") is not False for v in out.values() if isinstance(v, dict))
    out["peak_gib"] = _peak_gib(device)
    return out


def _pinning(device: str) -> dict[str, Any]:
    """``worker --gpu I`` sets CUDA_VISIBLE_DEVICES=I before torch loads: the process then sees
    exactly that card (and its metrics report that card alone)."""
    if not device.startswith("cuda"):
        return {"passed": None, "note": "no card (dry run)"}
    import torch

    count = torch.cuda.device_count()
    probe = ("import json, torch; from common.observability.gpu import GpuCollector; "
             "print(json.dumps([torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.device_count() "
             "else None, [c['gpu'] for c in GpuCollector().cards()]]))")
    seen = {}
    for pin in (str(count - 1), str(count)):  # the last card, and one that does not exist
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": pin})
        seen[pin] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else done.stderr[-500:]
    last, missing = seen[str(count - 1)], seen[str(count)]
    ok = (isinstance(last, list) and last[0] == 1 and last[1] == torch.cuda.get_device_name(count - 1)
          and isinstance(missing, list) and missing[0] == 0)
    return {"passed": ok, "cards": count, "pinned_to_last": last, "pinned_to_missing": missing}


def _bench(script: str, args: list[str]) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed: {done.stderr[-2000:]}")
    last = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith(("[", "{"))][-1])
    return last["rows"] if isinstance(last, dict) else last  # type: ignore[no-any-return]


def section_vl(device: str, dry: bool) -> dict[str, Any]:
    if dry:
        rows = _bench("bench_vl.py", ["--size", "tiny", "--device", device, "--batch-sizes", "1,2", "--items", "2",
                                      "--max-new-tokens", "32"])
    else:  # one random 7B checkpoint; batch 1 over 8 items, batches 8 and 32 over 32 items
        from bench_vl import build_random

        model = build_random("7b", Path(tempfile.mkdtemp(prefix="gpu-vl-")) / "vl")
        common = ["--size", "7b", "--model", str(model), "--device", device, "--max-new-tokens", "64"]
        rows = (_bench("bench_vl.py", [*common, "--batch-sizes", "1", "--items", "8"])
                + _bench("bench_vl.py", [*common, "--batch-sizes", "8,32", "--items", "32"]))
    return {"model": "tiny" if dry else "Qwen2.5-VL-7B shape, random weights", "rows": rows,
            "analyses_per_s": {str(r["batch_size"]): r["analyses_per_s"] for r in rows}}


def section_edit(device: str, dry: bool) -> dict[str, Any]:
    if dry:
        rows = _bench("bench_edit.py", ["--size", "tiny", "--device", device, "--steps", "2", "--batch-sizes", "1,2",
                                        "--items", "2", "--resolution", "64"])
    else:
        rows = _bench("bench_edit.py", ["--size", "real", "--device", device, "--dtype", "bfloat16", "--steps", "20",
                                        "--batch-sizes", "1,4", "--items", "8", "--resolution", "512"])
    return {"model": "tiny" if dry else "InstructPix2Pix shape (SD 1.5 UNet), random weights", "rows": rows,
            "images_per_s": {str(r["batch_size"]): r["images_per_s"] for r in rows},
            "peak_gib": max((r.get("peak_gib") or 0 for r in rows), default=None)}


def _scale_clip(out: Path) -> Path:
    """The tiny CLIP's tokenizer with a ViT-L/14 shaped model and a 224 px preprocessor."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from worker_score.tiny import build_tiny_clip

    build_tiny_clip(out)
    cfg = CLIPConfig.from_pretrained(out)
    cfg.text_config.update({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                            "num_attention_heads": 12})
    cfg.vision_config.update({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "image_size": 224, "patch_size": 14})
    cfg.projection_dim = 768
    CLIPModel(cfg).to(torch.bfloat16).save_pretrained(out)
    _preprocessor_size(out, 224)
    return out


def _scale_dino(out: Path) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from worker_score.tiny import build_tiny_dinov2

    build_tiny_dinov2(out)
    cfg = Dinov2Config.from_pretrained(out)
    cfg.update({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 518,
                "patch_size": 14})
    Dinov2Model(cfg).to(torch.bfloat16).save_pretrained(out)
    _preprocessor_size(out, 224)
    return out


def _preprocessor_size(folder: Path, side: int) -> None:
    path = folder / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    for key in ("size", "crop_size"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = {k: side for k in cfg[key]}
        elif key in cfg:
            cfg[key] = side
    path.write_text(json.dumps(cfg))


def section_score(device: str, dry: bool) -> dict[str, Any]:
    from common.core.backends import load_backend
    from common.devkit import samples
    from common.devkit.tinymodels import build_one
    from common.domain.scoring import ScoreItem

    tmp = Path(tempfile.mkdtemp(prefix="gpu-score-"))
    n, batch = (4, 2) if dry else (64, 32)
    items = [ScoreItem(key=f"s{i}", input_image=samples.person(i), edited_image=samples.person(i + 1),
                       prompt="make the jacket red", garments=[samples.garment(i)]) for i in range(n)]
    out: dict[str, Any] = {"items": n, "batch": batch}
    for name, build in (("clip", _scale_clip), ("dino", _scale_dino)):
        folder = build_one(name, tmp) if dry else build(tmp / name)
        scorer = load_backend("scorer", name, model=str(folder), device=device, dtype="bfloat16", max_batch=batch)
        scorer.load()
        scorer.run_batch(items[:batch])  # warm-up
        _sync(device)
        started = time.perf_counter()
        outputs = [o for i in range(0, n, batch) for o in scorer.run_batch(items[i:i + batch])]
        _sync(device)
        seconds = time.perf_counter() - started
        out[name] = {"items_per_s": round(n / seconds, 2), "ok": sum(o.error is None for o in outputs)}
        scorer.unload()
    out["peak_gib"] = _peak_gib(device)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def section_overlap(device: str, dry: bool) -> dict[str, Any]:
    script = HERE / "bench_overlap.py"
    if not script.exists():
        return {"note": "benchmarks/bench_overlap.py is not there"}
    out: dict[str, Any] = {}
    for stage in ("vl", "edit"):
        done = subprocess.run([sys.executable, str(script), "--stage", stage, "--device", device, "--json",
                               *(["--quick"] if dry else [])], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"bench_overlap.py --stage {stage} failed: {done.stderr[-2000:]}")
        out[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


SECTIONS = {"checks": section_checks, "vl": section_vl, "edit": section_edit, "score": section_score,
            "overlap": section_overlap}

if __name__ == "__main__":
    sys.exit(main())
