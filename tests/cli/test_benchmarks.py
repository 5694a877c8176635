"""Every benchmark runs at its smallest size, and the GPU check's dry run passes, so none rots unnoticed.

These are plumbing checks, not timings: each asserts the run exits 0 and prints its result rows
with the keys a reader of the README relies on, never a speed. Every run is started the way a
user with a configured store would start it: ``SYNTHPIPE_DATABASE_URL``/``SYNTHPIPE_STORAGE_URL``
point at a scratch "user" database and folder, and a ``synthpipe.toml`` in the working directory
(or named by ``SYNTHPIPE_CONFIG``) points elsewhere again; none of them may be touched, because a
benchmark isolates itself (``benchmarks/isolation.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.databases import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


class UserStore:
    """A caller's configured store that a benchmark must leave alone."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "user"
        self.root.mkdir()
        self.db = self.root / "user.db"
        self.objects = self.root / "objects"
        self.toml_db = self.root / "from-toml.db"
        self.toml = self.root / "synthpipe.toml"
        self.toml.write_text(f'database_url = "sqlite:///{self.toml_db}"\n'
                             f'storage_url = "{(self.root / "toml-objects").as_uri()}"\n')
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        (self.cwd / "synthpipe.toml").write_text(self.toml.read_text())
        self.before = self.snapshot()

    def env(self, config_env: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SYNTHPIPE_CONFIG"}
        env.update({"SYNTHPIPE_DATABASE_URL": f"sqlite:///{self.db}", "SYNTHPIPE_STORAGE_URL": self.objects.as_uri(),
                    "TOKENIZERS_PARALLELISM": "false", "SE_OFFLINE": "true"})
        if config_env:  # else the synthpipe.toml in the working directory is the one found
            env["SYNTHPIPE_CONFIG"] = str(self.toml)
        return env

    def snapshot(self) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_size for p in sorted(self.root.rglob("*"))}

    def assert_untouched(self) -> None:
        assert not self.db.exists(), "a benchmark wrote into SYNTHPIPE_DATABASE_URL's database"
        assert not self.objects.exists(), "a benchmark wrote into SYNTHPIPE_STORAGE_URL's folder"
        assert not self.toml_db.exists(), "a benchmark read synthpipe.toml"
        assert self.snapshot() == self.before


@pytest.fixture
def user(tmp_path: Path) -> UserStore:
    return UserStore(tmp_path)


def run_bench(user: UserStore, script: str, *args: str, timeout: float = 120) -> Any:
    """Run ``benchmarks/<script>`` as a user would (from another directory, settings of their own);
    return its last JSON line."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=user.cwd, env=user.env(False),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("{", "["))]
    assert lines, f"{script} printed no JSON result:\n{done.stdout[-3000:]}"
    user.assert_untouched()
    return json.loads(lines[-1])


def has_keys(row: dict[str, Any], *keys: str) -> bool:
    missing = [k for k in keys if k not in row]
    assert not missing, f"missing {missing} in {row}"
    return True


# --- the GPU check's dry run ----------------------------------------------------------------


def test_gpu_dry_run_passes_every_section_and_leaves_the_callers_store_alone(user: UserStore,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    env = {**user.env(True), "SYNTHPIPE_BENCH_DRY_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--dry-run", str(out)], cwd=user.cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    figures = json.loads(out.read_text())
    sections = ["checks", "vl", "edit", "score", "overlap", "edit-plus", "flux", "train"]
    failed = {k: figures.get(k, {}).get("error") or figures.get(k, {}).get("log", "")[-1500:]
              for k in sections if k not in figures or "error" in figures[k] or figures[k].get("passed") is False}
    assert not failed, f"sections not ok: {failed}\n{done.stderr[-2000:]}"
    assert done.returncode == 0, done.stderr[-2000:]
    assert figures["dry_run"] is True
    assert figures["vl"]["rows"][0]["complete_valid"] == figures["vl"]["rows"][0]["items"]
    assert has_keys(figures["edit-plus"]["edit"], "s_per_step", "s_per_image_at_default_steps", "peak_gib")
    assert figures["edit-plus"]["lora"]["steps"] == 2 and has_keys(figures["edit-plus"]["lora"], "s_per_step")
    assert figures["flux"]["kontext_per_step"]["default_steps"] == 28 and figures["flux"]["lora"]["steps"] == 2
    assert {r["target"] for r in figures["train"]["rows"]} == {"edit", "vl"}
    user.assert_untouched()


def test_gpu_check_refuses_an_unknown_section(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--sections", "vl,nope",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nope" in done.stderr
    assert not (tmp_path / "x.json").exists()


# --- each benchmark at its smallest size -----------------------------------------------------


@pytest.mark.postgres
def test_bench_best_of_n(user: UserStore) -> None:
    report = run_bench(user, "bench_best_of_n.py", "--smoke", "--json")
    assert report["benchmark"] == "best_of_n" and report["analysed_sets"] == report["selected_sets"] == 2
    assert report["all_candidates_scored"] is True and [r["n"] for r in report["rows"]] == [1, 2]
    assert [r["candidates"] for r in report["rows"]] == [2, 4]
    assert all(has_keys(r, "acceptance_per_set", "accepted_candidates_per_set", "edit_model_s",
                        "edit_model_s_per_accepted_edit") for r in report["rows"])


def test_bench_claim(user: UserStore) -> None:
    rows = run_bench(user, "bench_claim.py", "--jobs", "20", "--processes", "1", "--pg-url", PG_ADMIN_URL)
    assert [r["db"] for r in rows] == ["sqlite", "postgresql"]
    assert all(has_keys(r, "processes", "jobs_per_s") and r["jobs"] == 20 for r in rows)


@pytest.mark.browser
def test_bench_crawl(user: UserStore) -> None:
    report = run_bench(user, "bench_crawl.py", "--pages", "2", "--images", "1", "--hosts", "1", "--delay", "0.05",
                       "--settle", "0.05", "--sizes", "50", "--trials", "2")
    (crawl,) = report["crawl"]
    assert crawl["hosts"] == 1 and crawl["pages"] == 2 and crawl["polite"] is True
    (pairing,) = report["pairing"]
    assert pairing["assets"] == 50 and has_keys(pairing, "indexed_ms", "load_all_ms")


@pytest.mark.postgres
def test_bench_shop_page(user: UserStore) -> None:
    report = run_bench(user, "bench_shop_page.py", "--elements", "200", "--state-kb", "20", "--photos", "1")
    (page,) = report["pages"]
    assert page["elements"] == 200 and page["urls"] > page["kept"] > 0 and has_keys(page, "extract_ms", "group_ms")
    assert report["detector_ms_per_photo"] > 0


def test_bench_dedup(user: UserStore) -> None:
    report = run_bench(user, "bench_dedup.py", "--sizes", "200", "--lookups", "10", "--scan-lookups", "3",
                       "--pg-url", PG_ADMIN_URL)
    assert set(report) == {"sqlite", "postgresql"}
    for (row,) in report.values():
        assert row["assets"] == 200 and has_keys(row, "banded_ms", "scan_ms", "speedup", "hits")


@pytest.mark.postgres
@pytest.mark.redis
def test_bench_distributed(user: UserStore) -> None:
    report = run_bench(user, "bench_distributed.py", "--modes", "noop", "--workers", "1", "--noop-jobs", "4",
                       "--noop-trickle", "1", "--pg-url", PG_ADMIN_URL, "--max-seconds", "150", timeout=200)
    (burst,) = report["burst"]
    assert burst["mode"] == "noop" and burst["workers"] == 1 and burst["jobs"] == 4
    assert burst["statuses"]["succeeded"] == 4 and not burst["timed_out"]
    assert [t["mode"] for t in report["trickle"]] == ["noop"]


def test_bench_edit(user: UserStore) -> None:
    report = run_bench(user, "bench_edit.py", "--size", "tiny", "--device", "cpu", "--steps", "1",
                       "--batch-sizes", "1", "--items", "1", "--resolution", "64")
    (row,) = report["rows"]
    assert row["steps"] == 1 and row["batch_size"] == 1 and row["ok"] == 1
    assert has_keys(row, "images_per_s", "s_per_image")


def test_bench_flux(user: UserStore) -> None:
    report = run_bench(user, "bench_flux.py", "--steps", "2", "--items", "1", "--batch-sizes", "1",
                       "--lora-steps", "2", "--lora-examples", "1")
    (row,) = report["kontext"]
    assert row["ok"] == row["items"] == 1 and has_keys(row, "images_per_s", "s_per_image")
    assert has_keys(report["kontext_per_step"], "s_per_step", "s_per_image_at_default_steps")
    assert report["lora"]["steps"] == 2 and has_keys(report["lora"], "s_per_step", "loss_first", "loss_last")


def test_bench_overlap(user: UserStore) -> None:
    report = run_bench(user, "bench_overlap.py", "--stage", "vl", "--quick", "--jobs", "2", "--batch-size", "2",
                       "--photo-side", "128", "--max-new-tokens", "16", "--json")
    assert report["benchmark"] == "overlap" and report["jobs"] == 2
    assert set(report["rounds"]) == {"serial", "overlapped"}
    assert 0 < report["serial_busy_share"] <= 1 and 0 < report["overlapped_busy_share"] <= 1


def test_bench_qwen_edit(user: UserStore) -> None:
    report = run_bench(user, "bench_qwen_edit.py", "--steps", "2", "--lora-steps", "2", "--lora-examples", "1",
                       "--lora-batch", "1")
    assert report["edit"]["ok"] is True and report["edit"]["steps_timed"] == [1, 2]
    assert has_keys(report["edit"], "s_per_step", "s_per_image_at_default_steps", "peak_gib")
    assert report["lora"]["steps"] == 2 and has_keys(report["lora"], "s_per_step", "peak_gib")


@pytest.mark.postgres
def test_bench_review(user: UserStore) -> None:
    report = run_bench(user, "bench_review.py", "--edits", "30", "--repeat", "1", "--pg-url", PG_ADMIN_URL)
    assert set(report["results"]) == {"sqlite", "postgresql"}
    for row in report["results"].values():
        assert has_keys(row, "queue page (20, least certain)", "decision POST", "agreement stats")


def test_bench_score(user: UserStore) -> None:
    report = run_bench(user, "bench_score.py", "--items", "2", "--batch-sizes", "1", "--device", "cpu")
    assert {r["scorer"] for r in report["rows"]} == {"change", "identity", "clip", "dino", "garment"}
    assert all(r["batch_size"] == 1 and r["scores_per_s"] > 0 for r in report["rows"])


@pytest.mark.postgres
@pytest.mark.redis
def test_bench_tls(user: UserStore) -> None:
    report = run_bench(user, "bench_tls.py", "--modes", "noop", "--repeats", "1", "--noop-jobs", "4",
                       "--noop-trickle", "1", "--pg-url", PG_ADMIN_URL, "--max-seconds", "150", timeout=200)
    assert sorted(r["broker"] for r in report["runs"]) == ["plain", "tls"]
    assert {s["broker"] for s in report["summary"]} == {"plain", "tls", "tls/plain"}


def test_bench_train(user: UserStore) -> None:
    report = run_bench(user, "bench_train.py", "--batch-sizes", "1", "--ranks", "4", "--steps", "1", "--json")
    assert [r["target"] for r in report["rows"]] == ["edit", "vl"]
    assert all(has_keys(r, "steps_per_s", "loss_first", "loss_last") and r["steps"] == 1 for r in report["rows"])


def test_bench_vl(user: UserStore) -> None:
    rows = run_bench(user, "bench_vl.py", "--items", "1", "--batch-sizes", "1", "--max-new-tokens", "16",
                     "--device", "cpu")
    (row,) = rows
    assert row["batch_size"] == 1 and row["items"] == 1 and row["max_new_tokens"] == 16
    assert has_keys(row, "valid", "complete_valid", "tokens_per_analysis", "analyses_per_s")
