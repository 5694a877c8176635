"""The scale benchmark runs end to end at a tiny size (``--smoke``): every operation it reports
is measured, with a number, and the caller's settings are never read or written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from fixtures.databases import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]

#: what the README's scale table reports; a layout added to the benchmark adds its own two rows
CORE_OPERATIONS = {
    "build the store (SQL)", "claim 8 jobs", "status", "metrics scrape", "review queue page (least certain, 20)",
    "review queue filtered (ai=rejected, 20)", "/api/stats", "score --redecide", "score --redecide peak RSS",
    "export imagefolder", "export imagefolder peak RSS", "export parquet", "export parquet peak RSS",
}


def test_bench_scale_smoke_measures_every_operation_in_its_own_store(tmp_path: Path) -> None:
    caller_data = tmp_path / "caller-data"
    env = {**os.environ, "SYNTHPIPE_BENCH_PG_URL": PG_ADMIN_URL,
           # a caller's store: the benchmark must leave it alone
           "SYNTHPIPE_DATA_DIR": str(caller_data), "SYNTHPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'caller.db'}",
           "SYNTHPIPE_STORAGE_URL": (tmp_path / "caller-objects").as_uri()}
    done = subprocess.run([sys.executable, "benchmarks/bench_scale.py", "--smoke", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "scale" and list(report["results"]) == ["500"]
    ops = report["operations"]
    assert set(ops) >= CORE_OPERATIONS, sorted(CORE_OPERATIONS - set(ops))
    measured = report["results"]["500"]
    assert set(measured) == set(ops)
    for name in ops:
        value = measured[name]
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value > 0, (name, value)
        assert report["units"][name] in ("ms", "s", "MiB")
    assert not caller_data.exists() and not (tmp_path / "caller.db").exists()
    assert not (tmp_path / "caller-objects").exists()
