"""The GPU check: the CUDA-path checks and the real-size benchmarks (random weights), one JSON.

    python benchmarks/gpu_check.py --out gpu.json             # a machine with a card (benchmarks/gpu.sh)
    python benchmarks/gpu_check.py --dry-run --out dry.json   # any machine: CPU, tiny sizes, every part

Each section runs in a child process under its own time limit, so a hang or a crash costs that
section only; the JSON is rewritten after every section (what finished survives a kill).

Every section runs isolated: its child process gets none of the caller's ``SYNTHPIPE_*``
settings, its own temporary data dir (SQLite database and object storage under it) and no
``synthpipe.toml`` (``SYNTHPIPE_CONFIG`` names a file that does not exist); the benchmarks it runs
isolate themselves the same way (``benchmarks/isolation.py``). ``--sections a,b`` picks sections.

Sections (real run: random weights of the released shapes, bfloat16, built on the card; dry run:
the test suite's tiny checkpoints on the CPU):

- ``checks``: bf16 loading, ``--gpu`` pinning, schema-constrained decoding on the card, batch
  equals single for the VL model and the editor (tiny models).
- ``vl``: complete analyses with Qwen2.5-VL-7B shapes: 16 try-on items at batch 16 with
  ``max_new_tokens`` 2048 (room for the whole schema-constrained answer): how many were complete
  and valid against the schema, tokens per analysis, analyses/s and tokens/s (``bench_vl.py``).
- ``edit``: InstructPix2Pix (SD 1.5 UNet shape), images/s at 20 steps and 512 px, batch 1 and 4,
  peak memory (``bench_edit.py``).
- ``score``: CLIP ViT-L/14 and DINOv2-L shapes, items/s.
- ``overlap``: model-busy share of a stage's wall time, serial and overlapped (``bench_overlap.py``).
- ``edit-plus``: Qwen-Image-Edit Plus (2509 shapes: 20.4B transformer, Qwen2.5-VL-7B text
  encoder, 16-channel VAE) through the qwen-image-edit-plus backend: one person + one garment
  photo, 512 px output (``edit.max_side``), references at the native 1024² / 384² areas, true CFG;
  s/step from a 1-step and a 3-step call, s/image extrapolated to the default 40 steps, peak
  memory; then 3 steps of the edit-plus LoRA trainer on the same weights (256 px, batch 2, rank
  4): s/step, peak memory. If the full text encoder does not fit beside the transformer, it is
  built with fewer layers and ``model.text_encoder_layers`` says how many (``bench_qwen_edit.py``).
- ``flux``: FLUX.1 Kontext (12B transformer, T5-XXL, CLIP-L, 16-channel VAE) through the
  flux-kontext backend at 1024 px: 4 steps and 1 step, s/step and s/image extrapolated to the
  default 28 steps, peak memory; then 3 steps of the character LoRA trainer (FLUX.1-dev, the
  same weights) at 512 px, batch 2, rank 16: s/step, peak memory (``bench_flux.py``).
- ``train``: 4 steps each of the edit LoRA trainer (InstructPix2Pix, 256 px, batch 2, rank 4)
  and the VL LoRA trainer (Qwen2.5-VL-7B, 448 px images, batch 2, rank 8; bf16 and plain AdamW:
  bitsandbytes' 4-bit and 8-bit paths are not carried to the card): s/step, peak memory
  (``bench_train.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from isolation import clean_env, isolate  # noqa: E402  (benchmarks/, put on the path just above)

#: section -> seconds it may take (real run, one H100: the whole, with gpu.sh's install, under 8 minutes)
BUDGET = {"checks": 40, "vl": 65, "edit": 40, "score": 25, "overlap": 40, "edit-plus": 95, "flux": 65, "train": 70}
#: the same on a CPU with tiny models (a few minutes in all on 2 cores)
DRY_BUDGET = {"checks": 240, "vl": 150, "edit": 120, "score": 90, "overlap": 240, "edit-plus": 180, "flux": 150,
              "train": 150}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu-figures.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU and tiny sizes: check the script itself quickly")
    ap.add_argument("--sections", default=",".join(BUDGET), help="comma list of: " + ", ".join(BUDGET))
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="the whole run; a section gets what is left when that is less than its budget")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # a child process runs one section
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if args.section:
        isolate(f"gpu-check-{args.section}-")  # the parent cleaned the environment; this makes sure
        result = SECTIONS[args.section](device, args.dry_run)
        sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")
        return 0
    budget = DRY_BUDGET if args.dry_run else BUDGET
    sections = [n for n in args.sections.split(",") if n]
    unknown = [n for n in sections if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    figures: dict[str, Any] = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "environment": environment()}
    total = time.perf_counter()
    for name in sections:
        started = time.perf_counter()
        left = None if args.max_seconds is None else args.max_seconds - (started - total)
        limit = budget[name] if left is None else max(1.0, min(budget[name], left - 5))
        cmd = [sys.executable, __file__, "--section", name, *(["--dry-run"] if args.dry_run else [])]
        data_dir = Path(tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT,
                                  env={**clean_env(data_dir=data_dir), "TOKENIZERS_PARALLELISM": "false"})
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode == 0 and lines:
                figures[name] = json.loads(lines[-1].removeprefix("RESULT "))
            else:
                figures[name] = {"error": f"exit {done.returncode}", "log": (done.stdout + done.stderr)[-3000:]}
        except subprocess.TimeoutExpired as exc:
            log = (exc.stdout or b"") + (exc.stderr or b"")
            figures[name] = {"error": f"timed out after {limit:.0f} s",
                             "log": (log.decode(errors="replace") if isinstance(log, bytes) else str(log))[-3000:]}
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        figures[name]["budget_s"] = round(limit)
        figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
        figures["total_seconds"] = round(time.perf_counter() - total, 1)
        out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"{name}: {'error: ' + figures[name]['error'] if 'error' in figures[name] else 'ok'} "
              f"({figures[name]['section_seconds']} s)", file=sys.stderr)
    failed = [k for k in sections if "error" in figures[k] or figures[k].get("passed") is False]
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


def _report(script: str, args: list[str]) -> Any:
    """Run ``benchmarks/<script>`` (it isolates itself); its last JSON line."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed: {done.stderr[-2000:]}")
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith(("[", "{"))][-1])


def _bench(script: str, args: list[str]) -> list[dict[str, Any]]:
    last = _report(script, args)
    return last["rows"] if isinstance(last, dict) else last  # type: ignore[no-any-return]


def section_vl(device: str, dry: bool) -> dict[str, Any]:
    """Complete analyses: a token budget the schema-constrained answer fits in (2048)."""
    if dry:
        rows = _bench("bench_vl.py", ["--size", "tiny", "--device", device, "--batch-sizes", "2", "--items", "2",
                                      "--max-new-tokens", "2048"])
    else:  # random Qwen2.5-VL-7B weights built on the card; 16 items at batch 16
        rows = _bench("bench_vl.py", ["--size", "7b", "--device", device, "--max-new-tokens", "2048",
                                      "--batch-sizes", "16", "--items", "16"])
    return {"model": "tiny" if dry else "Qwen2.5-VL-7B shape, random weights", "rows": rows,
            "max_new_tokens": 2048,
            "complete_valid": {str(r["batch_size"]): f"{r['complete_valid']}/{r['items']}" for r in rows},
            "tokens_per_analysis": {str(r["batch_size"]): r["tokens_per_analysis"] for r in rows},
            "analyses_per_s": {str(r["batch_size"]): r["analyses_per_s"] for r in rows},
            "passed": all(r["complete_valid"] == r["items"] for r in rows)}


def section_edit(device: str, dry: bool) -> dict[str, Any]:
    if dry:
        rows = _bench("bench_edit.py", ["--size", "tiny", "--device", device, "--steps", "2", "--batch-sizes", "1,2",
                                        "--items", "2", "--resolution", "64"])
    else:
        rows = _bench("bench_edit.py", ["--size", "real", "--device", device, "--dtype", "bfloat16", "--steps", "20",
                                        "--batch-sizes", "1,4", "--items", "4", "--resolution", "512"])
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
    small = ["--quick", "--jobs", "2", "--batch-size", "2", "--photo-side", "256", "--max-new-tokens", "32",
             "--steps", "2", "--edit-side", "64"]
    for stage in ("vl", "edit"):
        done = subprocess.run([sys.executable, str(script), "--stage", stage, "--device", device, "--json",
                               *(small if dry else [])], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"bench_overlap.py --stage {stage} failed: {done.stderr[-2000:]}")
        out[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def section_edit_plus(device: str, dry: bool) -> dict[str, Any]:
    """Qwen-Image-Edit Plus: s/step, s/image at 40 steps, peak; then edit-plus LoRA steps."""
    if dry:
        report = _report("bench_qwen_edit.py", ["--size", "tiny", "--device", device, "--steps", "2",
                                                "--lora-steps", "2", "--lora-examples", "1", "--lora-batch", "1"])
    else:
        report = _report("bench_qwen_edit.py", ["--size", "real", "--device", device, "--steps", "3",
                                                "--lora-steps", "3", "--lora-examples", "2", "--lora-batch", "2"])
    report["passed"] = bool(report.get("edit", {}).get("ok"))
    return report


def section_flux(device: str, dry: bool) -> dict[str, Any]:
    """FLUX.1 Kontext: s/step, s/image at 28 steps, peak; then character LoRA steps."""
    if dry:
        report = _report("bench_flux.py", ["--size", "tiny", "--device", device, "--steps", "2", "--items", "1",
                                           "--batch-sizes", "1", "--lora-steps", "2", "--lora-examples", "1"])
    else:
        report = _report("bench_flux.py", ["--size", "real", "--device", device, "--steps", "4", "--items", "1",
                                           "--batch-sizes", "1", "--lora-steps", "3", "--lora-examples", "2",
                                           "--lora-batch", "2"])
    report["model"] = "tiny" if dry else "FLUX.1-Kontext-dev / FLUX.1-dev shapes, random weights"
    report["passed"] = all(r["ok"] == r["items"] for r in report["kontext"])
    return report


def section_train(device: str, dry: bool) -> dict[str, Any]:
    """The edit (InstructPix2Pix) and VL (Qwen2.5-VL) LoRA trainers: s/step, peak memory."""
    size = ["--size", "tiny" if dry else "real", "--device", device, "--json", "--batch-sizes", "1" if dry else "2"]
    steps = ["--steps", "2" if dry else "4"]
    rows = (_bench("bench_train.py", [*size, *steps, "--target", "edit", "--ranks", "4",
                                      "--resolution", "64" if dry else "256"])
            + _bench("bench_train.py", [*size, *steps, "--target", "vl", "--ranks", "8",
                                        "--resolution", "56" if dry else "448"]))
    return {"model": "tiny" if dry else "InstructPix2Pix (SD 1.5) and Qwen2.5-VL-7B shapes, random weights",
            "rows": rows, "s_per_step": {r["target"]: r.get("s_per_step") or round(1 / r["steps_per_s"], 4)
                                         for r in rows},
            "peak_gib": {r["target"]: r.get("peak_gib") for r in rows}}


SECTIONS = {"checks": section_checks, "vl": section_vl, "edit": section_edit, "score": section_score,
            "overlap": section_overlap, "edit-plus": section_edit_plus, "flux": section_flux,
            "train": section_train}

if __name__ == "__main__":
    sys.exit(main())
