"""``export`` and ``import`` against hostile folders and rows, through the CLI:

- export never deletes or writes over what it did not write (its marker lists each file);
- a row PostgreSQL cannot store (a NUL in the instruction) is one refused row, NaN in a provenance
  column becomes null, and the rest import, once;
- a FIFO or a symlink to a device in the dataset is refused unopened (ingest and import alike);
- an instruction longer than ``imports.max_prompt_chars`` is refused with a code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fixtures.photos import noise, photo
from sqlalchemy import select

from common.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    parsed = json.loads(out.out) if "--json" in argv and code == 0 else out.out
    return code, parsed, out.err


def _imagefolder(root: Path, rows: list[dict[str, Any]]) -> Path:
    """An imagefolder dataset; ``rows`` hold image bytes under ``input``/``edited``, or name a file
    the test makes itself under ``input_name``/``edited_name``."""
    train = root / "train"
    train.mkdir(parents=True)
    with (train / "metadata.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            record: dict[str, Any] = {"edit_prompt": row["prompt"], "note": f"row {i}"}
            for col, key in (("input_image_file_name", "input"), ("edited_image_file_name", "edited")):
                name = row.get(f"{key}_name") or f"{i}-{key}.png"
                if key in row:
                    (train / name).write_bytes(row[key])
                record[col] = name
            fh.write(json.dumps(record) + "\n")
    return root


def _parquet(path: Path, columns: dict[str, list[Any]], images: tuple[str, ...], floats: tuple[str, ...]) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    def feature(name: str) -> Any:
        return ImageFeature() if name in images else Value("float64") if name in floats else Value("string")

    values = {name: ([{"bytes": b, "path": None} for b in col] if name in images else col)
              for name, col in columns.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(values, features=Features({n: feature(n) for n in columns})).to_parquet(str(path))
    return path


def _import_two(db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[int]:
    from common.store.rows import Edit

    folder = _imagefolder(tmp_path / "pairs", [
        {"input": photo(1), "edited": noise(101), "prompt": "make the jacket red"},
        {"input": photo(2), "edited": noise(102), "prompt": "relight the scene at dusk"}])
    code, got, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0 and got["imported"] == 2, err
    with db.session() as s:
        return [e.id for e in s.scalars(select(Edit).order_by(Edit.id))]


def _tree(root: Path) -> tuple[set[str], set[str]]:
    """(files, folders) under ``root``, relative, the marker left out."""
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".synthpipe-export"}
    folders = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
    return files, folders


# --- 1. export owns exactly what it wrote --------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the folder rules do not depend on the store
def test_export_refuses_a_users_folder_inside_its_own_and_never_deletes_it(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _import_two(db, tmp_path, capsys)
    out = tmp_path / "out"
    assert _cli(capsys, "export", str(out), "--decision", "all")[0] == 0
    marker = json.loads((out / ".synthpipe-export").read_text())
    files, folders = _tree(out)
    assert set(marker["files"]) == files and set(marker["folders"]) == folders  # exactly what it wrote
    assert "train/metadata.jsonl" in files and "summary.json" in files and "data" not in folders

    # the user's own data/ beside the export: a parquet export would write into it, so it is refused
    (out / "data").mkdir()
    (out / "data" / "mine.txt").write_text("keep me")
    code, _, err = _cli(capsys, "export", str(out), "--format", "parquet", "--decision", "all")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out / 'data'} was not written by synthpipe export" in err
    assert (out / "data" / "mine.txt").read_text() == "keep me"
    assert _tree(out)[0] == files | {"data/mine.txt"}  # the refusal touched nothing

    # an imagefolder export does not need data/: it goes ahead and leaves it alone
    assert _cli(capsys, "export", str(out), "--decision", "all")[0] == 0
    assert (out / "data" / "mine.txt").read_text() == "keep me"
    assert "data" not in json.loads((out / ".synthpipe-export").read_text())["folders"]

    # a file the user put inside the export's own folder survives the export's clean-up
    (out / "train" / "notes.txt").write_text("my notes")
    (out / "data" / "mine.txt").unlink()
    (out / "data").rmdir()
    assert _cli(capsys, "export", str(out), "--format", "parquet", "--decision", "all")[0] == 0
    assert (out / "train" / "notes.txt").read_text() == "my notes"
    assert not (out / "train" / "metadata.jsonl").exists() and not (out / "train" / "images").exists()
    assert (out / "data" / "train-00000-of-00001.parquet").is_file()
    assert _cli(capsys, "export", str(out), "--decision", "all")[0] == 0
    assert (out / "train" / "notes.txt").read_text() == "my notes" and (out / "train" / "metadata.jsonl").is_file()
    assert not (out / "data").exists()  # the parquet export's own folder went with its file


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_over_a_snapshot_export_keeps_the_users_summary(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.store.rows import Snapshot

    ids = _import_two(db, tmp_path, capsys)
    with db.session() as s:
        snap = Snapshot(sha256="f" * 64, target="edit", edit_ids=ids, size=len(ids), selection={})
        s.add(snap)
        s.flush()
        snap_id = snap.id
    out = tmp_path / "out"
    assert _cli(capsys, "export", str(out), "--snapshot", str(snap_id))[0] == 0
    assert (out / "ai-toolkit" / "control").is_dir() and (out / "snapshot.json").is_file()
    (out / "summary.json").write_text('{"mine": true}\n')
    code, _, err = _cli(capsys, "export", str(out), "--decision", "all")
    assert code == 2 and f"{out / 'summary.json'} was not written by synthpipe export" in err, err
    assert (out / "summary.json").read_text() == '{"mine": true}\n'
    assert (out / "snapshot.json").is_file()  # refused before anything was removed

    (out / "summary.json").unlink()
    assert _cli(capsys, "export", str(out), "--decision", "all")[0] == 0
    assert not (out / "ai-toolkit").exists() and not (out / "snapshot.json").exists()  # the snapshot's, replaced
    assert json.loads((out / "summary.json").read_text())["export"]["rows"] == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_does_not_obey_an_old_marker_or_one_naming_paths_outside(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _import_two(db, tmp_path, capsys)
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    (old / "train" / "mine.jpg").write_bytes(b"my photo")
    (old / ".synthpipe-export").write_text(json.dumps({"written": ["train", "data", "summary.json"]}))
    code, _, err = _cli(capsys, "export", str(old), "--decision", "all")
    assert code == 2 and "older synthpipe" in err and len(err.strip().splitlines()) == 1, err
    assert (old / "train" / "mine.jpg").read_bytes() == b"my photo"

    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / ".synthpipe-export").write_text(json.dumps(
        {"version": 2, "files": ["../victim.txt", str(victim)], "folders": ["..", "/"]}))
    assert _cli(capsys, "export", str(hostile), "--decision", "all")[0] == 0
    assert victim.read_text() == "outside"


# --- 2. one store-unsafe row is one refusal -------------------------------------------------------


def test_nan_and_nul_are_sanitised_once_and_one_bad_row_is_refused(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.store.rows import Edit

    nan, inf = float("nan"), float("inf")
    path = _parquet(tmp_path / "pairs" / "data" / "train-00000-of-00001.parquet", {
        "input_image": [photo(i) for i in range(1, 6)],
        "edit_prompt": ["add snow", "make it night", "paint it blue", "make it\x00red", "add fog"],
        "edited_image": [noise(100 + i) for i in range(1, 6)],
        "score": [0.5, nan, inf, 0.7, -inf],
        "note": ["fine", "fine", "fine", "fine", "a\x00b"],
    }, images=("input_image", "edited_image"), floats=("score",))
    code, got, err = _cli(capsys, "import", str(path.parents[1]), "--json")
    assert code == 0, err
    assert got["imported"] == 4 and got["duplicates"] == 0
    assert [(r["row"], r["reason"].split(":", 1)[0]) for r in got["rejected"]] == [(3, "text.invalid")]
    assert "NUL" in got["rejected"][0]["reason"]
    with db.session() as s:
        edits = s.scalars(select(Edit).order_by(Edit.id)).all()
        assert [e.edit_prompt for e in edits] == ["add snow", "make it night", "paint it blue", "add fog"]
        assert [e.provenance["source"]["score"] for e in edits] == [0.5, None, None, None]
        assert edits[3].provenance["source"]["note"] == "ab"

    code, again, err = _cli(capsys, "import", str(path.parents[1]), "--json")
    assert code == 0, err
    assert again["imported"] == 0 and again["duplicates"] == 4 and len(again["rejected"]) == 1
    with db.session() as s:
        assert len(s.scalars(select(Edit)).all()) == 4


def test_the_sanitiser_repairs_json_and_refuses_unstorable_text() -> None:
    from common.store.sanitize import UnstorableText, json_safe, storable_text

    nan_list: list[Any] = [1.5, float("nan"), {"b": float("-inf")}]
    value: dict[Any, Any] = {"a": nan_list, "t\x00": ("x\x00y", "\ud800"), 3: True}
    assert json_safe(value) == {"a": [1.5, None, {"b": None}], "t": ["xy", "\ufffd"], "3": True}
    assert nan_list[1] != nan_list[1]  # the input is left as it was (NaN still there)
    with pytest.raises(TypeError):
        json_safe({"raw": b"\x00bytes"})
    assert storable_text("make it red", "edit_prompt") == "make it red"
    for bad in ("make it\x00red", "broken \udc80 surrogate"):
        with pytest.raises(UnstorableText) as info:
            storable_text(bad, "edit_prompt")
        assert info.value.code == "text.invalid" and "edit_prompt" in str(info.value)


# --- 3. FIFOs and devices are never opened --------------------------------------------------------


@pytest.mark.timeout(60)  # before the fix the FIFO's open() waits for a writer forever
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_fifo_or_a_device_symlink_is_refused_unopened_by_import_and_ingest(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _imagefolder(tmp_path / "pairs", [
        {"input": photo(1), "edited": noise(101), "prompt": "a good row"},
        {"input_name": "fifo.png", "edited": noise(102), "prompt": "input is a FIFO"},
        {"input": photo(3), "edited_name": "zero.png", "prompt": "edited is /dev/zero"},
    ])
    os.mkfifo(folder / "train" / "fifo.png")
    (folder / "train" / "zero.png").symlink_to("/dev/zero")
    code, got, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0, err
    assert got["imported"] == 1
    assert [(r["row"], r["reason"].split(":", 1)[0]) for r in got["rejected"]] == [
        (1, "file.not_regular"), (2, "file.not_regular")]
    assert "a FIFO" in got["rejected"][0]["reason"] and "a character device" in got["rejected"][1]["reason"]

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes(photo(9))
    os.mkfifo(photos / "pipe.jpg")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    code, got, err = _cli(capsys, "ingest", str(photos), "--role", "person", "--json")
    assert code == 0, err
    assert got["registered"] == 1
    assert {Path(r["path"]).name: r["reason"] for r in got["rejected"]} == {
        "pipe.jpg": "not a regular file (a FIFO)", "zero.jpg": "not a regular file (a character device)"}


def test_the_file_check_refuses_before_opening_and_reads_at_most_the_limit(tmp_path: Path) -> None:
    from common.media.files import FileRefused, UnreadableFile, read_regular_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for path in (fifo, link, tmp_path, Path("/dev/zero")):
        with pytest.raises(FileRefused) as info:
            read_regular_file(path, 1000)
        assert info.value.code == "file.not_regular", path
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    with pytest.raises(FileRefused) as info:
        read_regular_file(big, 1000)
    assert info.value.code == "image.too_large"
    with pytest.raises(UnreadableFile):
        read_regular_file(tmp_path / "missing", 1000)
    assert read_regular_file(big, 1001) == b"x" * 1001


# --- 4. the prompt length limit -----------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_prompts_longer_than_the_setting_are_refused(db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings

    huge = "paint the wall " * 70_000  # about a megabyte
    folder = _imagefolder(tmp_path / "pairs", [
        {"input": photo(1), "edited": noise(101), "prompt": "x" * 50},
        {"input": photo(2), "edited": noise(102), "prompt": "y" * 51},
        {"input": photo(3), "edited": noise(103), "prompt": huge},
    ])
    code, got, err = _cli(capsys, "import", str(folder), "--json")  # the default limit
    assert code == 0, err
    assert got["imported"] == 2 and [(r["row"], r["reason"].split(":", 1)[0]) for r in got["rejected"]] == [
        (2, "import.prompt_too_long")]

    monkeypatch.setenv("SYNTHPIPE_IMPORTS__MAX_PROMPT_CHARS", "50")
    reset_settings()
    second = _imagefolder(tmp_path / "pairs2", [
        {"input": photo(4), "edited": noise(104), "prompt": "z" * 50},
        {"input": photo(5), "edited": noise(105), "prompt": "w" * 51},
    ])
    code, got, err = _cli(capsys, "import", str(second), "--json")
    assert code == 0, err
    assert got["imported"] == 1 and [(r["row"], r["reason"].split(":", 1)[0]) for r in got["rejected"]] == [
        (1, "import.prompt_too_long")]
    assert "limit 50" in got["rejected"][0]["reason"]

    monkeypatch.setenv("SYNTHPIPE_IMPORTS__MAX_PROMPT_CHARS", "0")
    reset_settings()
    code, _, err = _cli(capsys, "import", str(second))
    assert code == 2 and "SYNTHPIPE_IMPORTS__MAX_PROMPT_CHARS" in err
