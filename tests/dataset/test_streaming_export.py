"""``synthpipe export`` streams: memory stays flat as the store grows, parquet and webdataset come in
shards of bounded size that ``datasets``, ``tarfile`` and ``webdataset`` read, and an export killed
mid-way and run again writes exactly the bytes an uninterrupted one writes.

The stores are the scale benchmark's (``benchmarks/bench_scale.py``): a few real photos through
ingest, then edits, scores, decisions and reviews written by SQL, on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.databases import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SMALL, LARGE = 1000, 4000

BUILD = """
import os, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
n, data = int(sys.argv[1]), Path(sys.argv[2])
from common.core.settings import get_settings
from common.store.db import get_database
from common.store.storage import get_storage
import bench_scale
settings = get_settings()
db = get_database(os.environ["SYNTHPIPE_DATABASE_URL"], ensure=False, settings=settings)
db.upgrade()
storage = get_storage(settings.storage_url)
photos = bench_scale.ingest_photos(db, storage, settings, data / "photos")
bench_scale.build_store(db, n, photos, queued=max(n // 50, 16))
"""


def _env(data: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_")}
    env.update(SYNTHPIPE_DATA_DIR=str(data), SYNTHPIPE_CONFIG=str(data / "no-synthpipe.toml"),
               SYNTHPIPE_DATABASE_URL=url)
    return env


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, dict[str, str]]]:
    """Two PostgreSQL stores, of SMALL and LARGE edits: each the environment that points at it."""
    from common.devkit.scratch import create_scratch_database, drop_scratch_database

    made: dict[int, dict[str, str]] = {}
    try:
        for n in (SMALL, LARGE):
            url = create_scratch_database(PG_ADMIN_URL, "synthpipe_test_stream")
            made[n] = _env(tmp_path_factory.mktemp(f"store-{n}"), url)
            done = subprocess.run([sys.executable, "-c", BUILD, str(n), made[n]["SYNTHPIPE_DATA_DIR"]], cwd=ROOT,
                                  env=made[n], capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
        yield made
    finally:
        for env in made.values():
            drop_scratch_database(PG_ADMIN_URL, env["SYNTHPIPE_DATABASE_URL"])


def _export_argv(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", "export", str(out), *args, "--json"]


def _timed_export(env: dict[str, str], out: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """Peak RSS (MiB) of one export under ``/usr/bin/time -v``, and its report."""
    done = subprocess.run(["/usr/bin/time", "-v", *_export_argv(out, *args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert rss is not None, done.stderr[-2000:]
    return int(rss.group(1)) / 1024, json.loads(done.stdout.strip().splitlines()[-1])


def _accepted(env: dict[str, str]) -> int:
    """How many edits are finally accepted, by the domain's own (whole-store) reading."""
    from common.domain.final_decision import final_decisions
    from common.store.db import get_database

    db = get_database(env["SYNTHPIPE_DATABASE_URL"], ensure=False)
    with db.session() as s:
        return sum(1 for f in final_decisions(s).values() if f.decision == "accepted")


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(900)
def test_peak_memory_is_flat_from_1k_to_4k_edits_and_parquet_shards_load(
        stores: dict[int, dict[str, str]], tmp_path: Path) -> None:
    import datasets
    import pyarrow.parquet as pq

    rss: dict[tuple[str, int], float] = {}
    reports: dict[tuple[str, int], dict[str, Any]] = {}
    for fmt in ("imagefolder", "parquet"):
        for n in (SMALL, LARGE):
            rss[fmt, n], reports[fmt, n] = _timed_export(stores[n], tmp_path / f"{fmt}-{n}", "--format", fmt,
                                                         "--shard-size", "2MB")
    for fmt in ("imagefolder", "parquet"):
        assert reports[fmt, LARGE]["rows"] > 3 * reports[fmt, SMALL]["rows"]  # four times the store, the rows
        assert rss[fmt, LARGE] < 1.3 * rss[fmt, SMALL], rss  # ... but not the memory

    out = tmp_path / f"parquet-{LARGE}"
    shards = sorted(p.name for p in (out / "data").iterdir())
    total = reports["parquet", LARGE]["shards"]
    assert total >= 5 and shards == [f"train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    expected = _accepted(stores[LARGE])
    assert reports["parquet", LARGE]["rows"] == expected
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert len(ds) == expected and ds.features["input_image"] == datasets.Image()
    assert ds["edit_id"] == sorted(ds["edit_id"])  # in edit-id order, across shards
    assert all(d == "accepted" for d in ds["decision"])
    row = ds[len(ds) // 2]
    assert row["input_image"].size[0] > 0 and len(row["garment_images"]) == 1 and row["ssim"] is not None
    # the schema is exactly what `Dataset.to_parquet` writes for the same rows (images, features metadata)
    ds.select(range(3)).to_parquet(str(tmp_path / "theirs.parquet"))
    ours = pq.read_schema(out / "data" / shards[0])
    assert ours.equals(pq.read_schema(tmp_path / "theirs.parquet"), check_metadata=True)
    for name in shards:
        meta = pq.ParquetFile(out / "data" / name).metadata
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))
    # the imagefolder copies each stored photo once, byte for byte
    images = tmp_path / f"imagefolder-{LARGE}" / "train" / "images"
    for image in images.iterdir():
        assert hashlib.sha256(image.read_bytes()).hexdigest() == image.name.split(".")[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export"]["rows"] == expected and summary["exported_rows"] == expected
    assert sum(g["accepted"] + g["rejected"] + g["unscored"]
               for g in summary["decisions"]["by_recipe"].values()) == LARGE


def _started(out: Path, fmt: str) -> bool:
    """Whether the export into ``out`` is well under way (its second shard, or 64 KiB of metadata)."""
    if fmt == "parquet":
        return (out / "data" / ".partial-train-00001.parquet").exists()
    if fmt == "webdataset":
        return (out / "data" / "train-000001.tar").exists()
    meta = out / "train" / "metadata.jsonl"
    return meta.exists() and meta.stat().st_size > 64 * 1024


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", ["parquet", "webdataset", "imagefolder"])
def test_an_export_killed_mid_way_and_run_again_writes_the_same_bytes(
        stores: dict[int, dict[str, str]], tmp_path: Path, fmt: str) -> None:
    from common.dataset.outfolder import JOURNAL, MARKER, read_marker

    env = stores[SMALL]
    args = ["--format", fmt, "--decision", "all", "--shard-size", "2MB"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert subprocess.run(_export_argv(whole, *args), cwd=ROOT, env=env, capture_output=True,
                          timeout=600).returncode == 0

    proc = subprocess.Popen(_export_argv(cut, *args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _started(cut, fmt) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL, "the export finished before it could be killed"
    assert not (cut / "summary.json").exists()  # it was cut short

    # what the killed export wrote is all listed as its own (marker + journal) ...
    owned = read_marker(cut)
    left = {p.relative_to(cut).as_posix() for p in cut.rglob("*") if p.is_file()} - {MARKER, JOURNAL}
    assert left and left <= owned.files, left - owned.files
    # ... so running it again replaces it, and ends with the same files, byte for byte
    (cut / "notes.txt").write_text("mine")  # a user's file beside it is left alone
    done = subprocess.run(_export_argv(cut, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (cut / "notes.txt").read_text() == "mine"
    (cut / "notes.txt").unlink()
    want, got = _digests(whole), _digests(cut)
    assert not (cut / JOURNAL).exists() and MARKER in got
    assert got == want
    marker = json.loads((cut / MARKER).read_text())
    assert set(marker["files"]) == set(got) - {MARKER}


@pytest.mark.timeout(600)
def test_webdataset_shards_hold_every_sample_for_tarfile_and_webdataset(
        stores: dict[int, dict[str, str]], tmp_path: Path) -> None:
    import webdataset

    out = tmp_path / "wds"
    size = 1_000_000
    done = subprocess.run(_export_argv(out, "--format", "webdataset", "--decision", "rejected", "--shard-size",
                                       str(size)), cwd=ROOT, env=stores[SMALL], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    names = sorted(p.name for p in (out / "data").iterdir())
    assert len(names) == report["shards"] >= 3 and names == [f"train-{i:06d}.tar" for i in range(len(names))]
    samples: dict[str, set[str]] = {}
    for name in names:
        assert (out / "data" / name).stat().st_size <= size
        with tarfile.open(out / "data" / name) as tar:
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                assert member.isfile() and member.mtime == 0 and field not in samples.get(key, set())
                samples.setdefault(key, set()).add(field)
                if field == "json":
                    record = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    assert record["edit_id"] == int(key) and record["decision"] == "rejected"
                    assert record["edit_prompt"] and json.loads(record["scores"])
    assert len(samples) == report["rows"] > 0
    assert all(fields == {"input.jpg", "edited.jpg", "json"} | ({"garment_0.jpg"} if len(fields) == 4 else set())
               for fields in samples.values())
    assert list(samples) == sorted(samples)  # edit-id order
    read = list(webdataset.WebDataset([str(out / "data" / n) for n in names], shardshuffle=False))
    assert [s["__key__"] for s in read] == list(samples)
    assert all(s["edited.jpg"][:2] == b"\xff\xd8" and json.loads(s["json"])["edit_id"] == int(s["__key__"])
               for s in read)


def test_shard_sizes_parse_and_a_bad_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli import main
    from common.dataset.writers import parse_size

    assert parse_size("500MB") == 500_000_000 and parse_size("64MiB") == 64 * 2**20
    assert parse_size("123") == 123 and parse_size("1.5 GB") == 1_500_000_000
    for bad in ("12XB", "-5", "0", "MB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["export", "out", "--shard-size", "12XB"])
    assert exit_.value.code == 2 and "not a size" in capsys.readouterr().err


class _NoImages:
    def get(self, uri: str) -> bytes:
        raise FileNotFoundError(uri)


def test_the_contact_sheet_keeps_a_bounded_sample_and_counts_every_row(tmp_path: Path) -> None:
    from common.core.settings import get_settings
    from common.media.contact_sheet import ContactSheet

    decisions = ["accepted"] * 10 + ["rejected"] * 7 + [""] * 3
    sheet = ContactSheet(["ssim"], {"ssim": (0.0, 1.0)}, {"ssim": [("min 0.5", 0.5)]}, max_rows=3)
    for i, decision in enumerate(reversed(decisions)):  # unscored and rejected arrive first
        sheet.add({"edit_id": i, "decision": decision, "ssim": i / 20, "input_uri": f"in{i}", "edited_uri": f"ed{i}",
                   "garment_uris": [], "sites": [""], "reasons": [], "recipe": "enrich", "seed": i,
                   "edit_backend": "x", "edit_prompt": f"prompt {i}", "analysis": "x" * 10_000})
    assert all(len(kept) <= 3 for kept in sheet.samples.values())  # never more than max_rows per decision
    assert all("analysis" not in row for kept in sheet.samples.values() for row in kept)
    html = sheet.write(_NoImages(), tmp_path / "sheet.html", {}, limits=get_settings().images).read_text()  # type: ignore[arg-type]
    assert html.count('class="card accepted"') == 3 and 'class="card rejected"' not in html
    assert [f"prompt {i}" in html for i in (10, 11, 12, 13)] == [True, True, True, False]  # the first accepted
    assert "20 edits (accepted 10, rejected 7, unscored 3)" in html and "showing 3 of 20" in html
    assert "ssim (n=20)" in html
