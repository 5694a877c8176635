"""Orchestration overhead over a TLS broker next to a plaintext one, in one run.

    python benchmarks/bench_tls.py                       # no-op stage, 1 worker, both brokers, twice each
    python benchmarks/bench_tls.py --modes noop,model --repeats 1 --noop-jobs 64

The configurations of ``bench_distributed.py`` (burst, then trickle; fresh PostgreSQL database
each time; real ``synthpipe worker`` processes), run once per broker, alternating so that the
machine's drift falls on both alike:

- ``plain``: redis-server on 127.0.0.1, ``redis://``, no password (what loopback allows);
- ``tls``: redis-server speaking only TLS (``--port 0 --tls-port``) with ``--requirepass``,
  certificates from ``scripts/make-certs.sh``, reached as ``rediss://:PASSWORD@127.0.0.1`` with
  ``celery.broker_ca_file``: what a second machine uses. Producer (this process, for the
  trickle), workers and their sweepers all go through TLS.

The ``noop`` mode (the stage function replaced by one that succeeds at once) shows pure
orchestration; its numbers are where TLS could show. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_distributed, next to this file
import bench_distributed as bd  # noqa: E402

PASSWORD = "bench-tls-" + os.urandom(8).hex()


class TlsRedisServer(bd.RedisServer):
    """redis-server with TLS only and a password, on 127.0.0.1."""

    def __init__(self, procs: bd.Processes, workdir: Path, certs: Path) -> None:
        self.port = bd._free_port()
        self.ca = certs / "ca.crt"
        self.url = f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.proc = procs.start(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(workdir)], log=workdir / "redis.log")
        if not bd._wait(self._up, 15):
            raise RuntimeError(f"TLS redis-server did not start on port {self.port}")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, ssl_ca_certs=str(self.ca))


class TlsBench(bd.Bench):
    """bench_distributed's configuration with the broker's CA file in every process's settings."""

    def env(self, workdir: Path, db_url: str) -> dict[str, str]:
        env = super().env(workdir, db_url)
        ca = getattr(self.redis, "ca", None)
        if ca is not None:
            env["SYNTHPIPE_CELERY__BROKER_CA_FILE"] = str(ca)
        return env


def _row(broker: str, burst: dict[str, Any], trickle: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "broker": broker, "mode": burst["mode"], "workers": burst["workers"],
        "burst_jobs_per_s": burst["jobs_per_s_after_start"], "burst_ovh_mean_s": burst["overhead_s"]["mean"],
        "startup_s": burst["startup_s"],
        "e2e_p50_s": trickle["latency_s"]["p50"] if trickle else None,
        "dispatch_p50_s": trickle["dispatch_s"]["p50"] if trickle and trickle["dispatch_s"] else None,
        "ovh_p50_s": trickle["overhead_s"]["p50"] if trickle else None,
        "ovh_p95_s": trickle["overhead_s"]["p95"] if trickle else None,
    }


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


COLUMNS = ("burst_jobs_per_s", "burst_ovh_mean_s", "startup_s", "e2e_p50_s", "dispatch_p50_s", "ovh_p50_s",
           "ovh_p95_s")


def print_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (mode, broker), the median over repeats, and TLS / plain."""
    head = (f"{'mode':<6} {'broker':<7} {'runs':>4} {'burst jobs/s':>12} {'burst ovh s':>11} {'start s':>7} "
            f"{'e2e p50':>8} {'dispatch p50':>12} {'ovh p50':>8} {'ovh p95':>8}")
    print("\n" + head)
    summary = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        per: dict[str, dict[str, Any]] = {}
        for broker in ("plain", "tls"):
            mine = [r for r in rows if r["mode"] == mode and r["broker"] == broker]
            if not mine:
                continue
            med = {c: _median([r[c] for r in mine]) for c in COLUMNS}
            per[broker] = med
            summary.append({"mode": mode, "broker": broker, "runs": len(mine), **med})
            print(f"{mode:<6} {broker:<7} {len(mine):>4} {bd._f(med['burst_jobs_per_s'], 1):>12} "
                  f"{bd._f(med['burst_ovh_mean_s'], 4):>11} {bd._f(med['startup_s']):>7} "
                  f"{bd._f(med['e2e_p50_s'], 4):>8} {bd._f(med['dispatch_p50_s'], 4):>12} "
                  f"{bd._f(med['ovh_p50_s'], 4):>8} {bd._f(med['ovh_p95_s'], 4):>8}")
        if len(per) == 2:
            ratio = {c: (per["tls"][c] / per["plain"][c]) if per["plain"][c] and per["tls"][c] is not None
                     else None for c in COLUMNS}
            summary.append({"mode": mode, "broker": "tls/plain", **ratio})
            print(f"{mode:<6} {'tls/pl':<7} {'':>4} {bd._f(ratio['burst_jobs_per_s']):>12} "
                  f"{bd._f(ratio['burst_ovh_mean_s']):>11} {bd._f(ratio['startup_s']):>7} "
                  f"{bd._f(ratio['e2e_p50_s']):>8} {bd._f(ratio['dispatch_p50_s']):>12} "
                  f"{bd._f(ratio['ovh_p50_s']):>8} {bd._f(ratio['ovh_p95_s']):>8}")
    return summary


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_noop_worker":
        return bd.noop_worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="noop", help="noop and/or model (bench_distributed's modes)")
    ap.add_argument("--workers", type=int, default=1, help="workers on the vl queue")
    ap.add_argument("--repeats", type=int, default=2, help="runs per broker, alternating plain and tls")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=8, help="model mode: burst jobs")
    ap.add_argument("--trickle", type=int, default=3, help="model mode: trickle jobs")
    ap.add_argument("--noop-jobs", type=int, default=32)
    ap.add_argument("--noop-trickle", type=int, default=10)
    ap.add_argument("--pg-url", default=bd.DEFAULT_PG)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--job-timeout", type=float, default=120)
    ap.add_argument("--max-seconds", type=float, default=1200)
    args = ap.parse_args()
    from isolation import isolate

    isolate("bench-tls-")  # own data dir, database and storage; none of the caller's settings
    args.with_edit, args.vl_model, args.edit_model, args.device = False, None, None, None
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("noop", "model") for m in modes) or args.repeats < 1 or args.workers < 1:
        ap.error("--modes takes noop and/or model; --repeats and --workers must be positive")
    bd._check_local(args.pg_url)
    if shutil.which("redis-server") is None:
        ap.error("redis-server is not on PATH")

    started = time.monotonic()
    procs = bd.Processes()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            from common.devkit import samples
            from common.devkit.tinymodels import build_one

            certs = tmp / "certs"
            subprocess.run([str(bd.ROOT / "scripts" / "make-certs.sh"), str(certs)], check=True,
                           capture_output=True)
            models = {"vl": str(build_one("vl", tmp / "models"))}
            total = max(args.jobs + args.trickle, args.noop_jobs + args.noop_trickle) + 1
            photos = samples.write_samples(tmp / "photos", persons=max(4, -(-total // 20)), garments=6, seed=11)
            brokers = {"plain": bd.RedisServer(procs, tmp), "tls": TlsRedisServer(procs, tmp, certs)}
            print(f"cores {os.cpu_count()}, host {socket.gethostname()}, {args.workers} vl worker(s), batch "
                  f"{args.batch_size}, modes {modes}, {args.repeats} run(s) per broker", flush=True)
            for rep in range(args.repeats):
                order = ("plain", "tls") if rep % 2 == 0 else ("tls", "plain")
                for mode in modes:
                    for broker in order:
                        if started + args.max_seconds - time.monotonic() < 30:
                            notes.append(f"{mode} {broker} run {rep}: skipped, --max-seconds reached")
                            continue
                        work = tmp / f"{broker}-{rep}"
                        work.mkdir(exist_ok=True)
                        bench = TlsBench(args, work, procs, brokers[broker], models, photos,
                                         started + args.max_seconds, notes)
                        print(f"... {mode} over {broker} (run {rep + 1})", flush=True)
                        try:
                            bursts, trickles = bench.run(mode, args.workers)
                        except Exception as exc:  # report it and go on
                            notes.append(f"{mode} {broker} run {rep}: failed: {type(exc).__name__}: {exc}")
                            continue
                        vl_trickle = next((t for t in trickles if t["stage"] == "vl"), None)
                        rows.append(_row(broker, bursts[0], vl_trickle))
        finally:
            procs.stop_all()
    summary = print_table(rows)
    for note in notes:
        print(f"note: {note}")
    print(json.dumps({"benchmark": "tls", "cores": os.cpu_count(), "workers": args.workers,
                      "seconds": round(time.monotonic() - started, 1), "runs": rows, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
