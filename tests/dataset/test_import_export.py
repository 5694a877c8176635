"""``synthpipe import`` and ``synthpipe export`` through the CLI, on SQLite and PostgreSQL where
the store matters (queueing, duplicates, decisions, scoring):
outside pairs in (imagefolder, parquet, synthpipe's own export, diffusers' layout, renamed
columns), hostile rows refused with codes, re-imports adding nothing; decisions out
(accepted / rejected / all), a folder that is not the export's never touched."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.photos import noise, photo, png
from PIL import Image
from sqlalchemy import select

from common.cli import main


def _bomb() -> bytes:
    """A small PNG that decodes to 49 million pixels (over the default 40 million limit)."""
    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()  # what the test itself printed is not the command's output
    code = main(list(argv))
    out = capsys.readouterr()
    parsed = json.loads(out.out) if "--json" in argv and code == 0 else out.out
    return code, parsed, out.err


def _imagefolder(root: Path, rows: list[dict[str, Any]]) -> Path:
    """An imagefolder dataset: ``rows`` hold image bytes under ``input``/``edited``/``garments``."""
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
            names = []
            for j, g in enumerate(row.get("garments", [])):
                (train / f"{i}-g{j}.png").write_bytes(g)
                names.append(f"{i}-g{j}.png")
            record["garment_images_file_names"] = names
            fh.write(json.dumps(record) + "\n")
    return root


def _parquet(path: Path, columns: dict[str, list[Any]], images: tuple[str, ...]) -> Path:
    """A parquet file written by ``datasets`` with ``images`` as image columns."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({name: (ImageFeature() if name in images else Value("string")) for name in columns})
    values = {name: ([{"bytes": None, "path": b} if isinstance(b, str) else {"bytes": b, "path": None}
                      for b in col] if name in images else col)
              for name, col in columns.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(values, features=features).to_parquet(str(path))
    return path


def _good_rows() -> list[dict[str, Any]]:
    return [
        {"input": photo(1), "edited": noise(101), "prompt": "make the jacket red",
         "garments": [photo(30)]},
        {"input": photo(2), "edited": noise(102), "prompt": "relight the scene at dusk"},
        {"input": photo(3), "edited": noise(103), "prompt": "x" * 3000},  # long unbroken prompt
    ]


def _bad_rows() -> list[dict[str, Any]]:
    return [
        {"input": photo(4), "edited": noise(104)[:2000], "prompt": "truncated edit"},
        {"input": photo(5), "edited": noise(105), "prompt": "   "},
        {"input": noise(6, side=20), "edited": noise(106), "prompt": "too small input"},
        {"input": photo(7), "edited": _bomb(), "prompt": "bomb"},
        {"edited": noise(108), "input_name": "missing.png", "prompt": "input file missing"},
        {"input": b"not an image at all", "edited": noise(109), "prompt": "text file"},
    ]


BAD_CODES = {3: "image.corrupt", 4: "import.prompt_missing", 5: "image.too_small",
             6: "image.decompression_bomb", 7: "import.image_unreadable", 8: "image.not_an_image"}


def test_imagefolder_import_rejects_bad_rows_with_codes_and_reimports_nothing(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from common.store.rows import Asset, Edit, ItemSet, Job

    folder = _imagefolder(tmp_path / "pairs", _good_rows() + _bad_rows())
    code, got, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0, err
    assert got["imported"] == 3 and got["duplicates"] == 0
    assert {r["row"]: r["reason"].split(":", 1)[0] for r in got["rejected"]} == BAD_CODES
    assert all(r["reason"].split(": ", 1)[1] for r in got["rejected"])  # a message follows the code
    with db.session() as s:
        edits = s.scalars(select(Edit).order_by(Edit.id)).all()
        assert [e.origin for e in edits] == ["imported"] * 3
        assert [e.provenance["row"] for e in edits] == [0, 1, 2]
        assert edits[0].provenance["path"] == str(folder.resolve())
        assert edits[0].provenance["source"]["note"] == "row 0"
        assert edits[2].edit_prompt == "x" * 3000 and edits[0].job_id is None and edits[0].analysis_id is None
        assert {s.get(ItemSet, e.item_set_id).recipe for e in edits} == {"tryon", "enrich"}
        tryon = s.get(ItemSet, edits[0].item_set_id)
        assert [m.role for m in tryon.members] == ["person", "garment"]
        assert all(_content_addressed(s.get(Asset, m.asset_id).uri) for m in tryon.members)
        score_jobs = s.scalars(select(Job).where(Job.stage == "score")).all()
        assert sorted(j.payload["edit_id"] for j in score_jobs) == [e.id for e in edits]
        assert {j.status for j in score_jobs} == {"queued"}

    code, again, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0, err
    assert again["imported"] == 0 and again["duplicates"] == 3 and len(again["rejected"]) == len(BAD_CODES)
    with db.session() as s:
        assert len(s.scalars(select(Edit)).all()) == 3
        assert len(s.scalars(select(Job).where(Job.stage == "score")).all()) == 3


def _content_addressed(uri: str) -> bool:
    """Stored objects are content-addressed files, not the dataset's own paths."""
    return "/pairs/" not in uri and uri.rsplit("/", 1)[-1].split(".")[0].isalnum()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing here depends on the database
def test_parquet_diffusers_layout_and_renamed_columns(db: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from common.store.rows import Edit

    # diffusers' InstructPix2Pix training data: input_image, edit_prompt, edited_image, in data/*.parquet;
    # a row naming a file outside the dataset is refused (a real image, but not the dataset's to give)
    outside = tmp_path / "outside.png"
    outside.write_bytes(photo(9))
    ip2p = tmp_path / "ip2p"
    _parquet(ip2p / "data" / "train-00000-of-00001.parquet",
             {"input_image": [photo(10), photo(11), str(outside)],
              "edit_prompt": ["turn it into a sketch", "add snow", "a file that is not the dataset's"],
              "edited_image": [noise(110), b"garbage", noise(111)]}, images=("input_image", "edited_image"))
    code, got, err = _cli(capsys, "import", str(ip2p), "--json")
    assert code == 0, err
    assert got["imported"] == 1 and [(r["row"], r["reason"].split(":")[0]) for r in got["rejected"]] == [
        (1, "image.not_an_image"), (2, "import.path_outside")]

    # an imagefolder whose metadata climbs out of its folder is refused whole, naming the file
    climbing = _imagefolder(tmp_path / "climbing", [
        {"edited": noise(113), "input_name": "../../outside.png", "prompt": "escape"}])
    code, _, err = _cli(capsys, "import", str(climbing))
    assert code == 2 and "../../outside.png" in err and len(err.strip().splitlines()) == 1

    # a file that is no parquet: one line, exit 2
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    code, _, err = _cli(capsys, "import", str(tmp_path / "broken.parquet"))
    assert code == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1

    # one parquet file with its own column names, renamed by flags
    other = _parquet(tmp_path / "mine.parquet",
                     {"original": [photo(12)], "instruction": ["make it night"], "result": [noise(112)],
                      "kind": ["enrich"]}, images=("original", "result"))
    code, err_out, err = _cli(capsys, "import", str(other), "--json")
    assert code == 2 and "no column 'input_image'" in err and "--input-column" in err
    assert len(err.strip().splitlines()) == 1
    code, got, err = _cli(capsys, "import", str(other), "--input-column", "original", "--prompt-column",
                          "instruction", "--edited-column", "result", "--recipe-column", "kind", "--json")
    assert code == 0, err
    assert got == {"imported": 1, "duplicates": 0, "rejected": [], "score_jobs": 1}
    with db.session() as s:
        edit = s.scalars(select(Edit).where(Edit.edit_prompt == "make it night")).one()
        assert edit.provenance["columns"]["input"] == "original" and edit.provenance["path"] == str(other.resolve())


def _decide(db: Any, edit_id: int, metrics: dict[str, dict[str, float]], judge: dict[str, Any] | None = None) -> str:
    """Store scores for ``edit_id`` the way the score stage does, and decide it with the real
    decision step and the default thresholds."""
    from common.core.settings import get_settings
    from common.domain.decide import decide_edit
    from common.store.rows import Score

    with db.session() as s:
        for scorer, values in metrics.items():
            s.add(Score(edit_id=edit_id, scorer=scorer, metrics=values, params={},
                        details=judge if scorer == "judge" else None))
        s.flush()
        result = decide_edit(s, edit_id, get_settings())
        s.commit()
    assert result is not None
    return result.decision


GOOD = {"change": {"ssim": 0.6, "mad": 0.1},
        "identity": {"faces_input": 1, "faces_edited": 1, "identity_distance": 0.2},
        "judge": {"overall": 8.5}}
LOST = {"change": {"ssim": 0.6, "mad": 0.1},
        "identity": {"faces_input": 1, "faces_edited": 1, "identity_distance": 0.7},
        "judge": {"overall": 8.0}}
NO_FACE = {"change": {"ssim": 0.6, "mad": 0.1},
           "identity": {"faces_input": 1, "faces_edited": 0}}


def _imported(db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[int]:
    from common.store.rows import Edit

    folder = _imagefolder(tmp_path / "pairs", _good_rows() + [
        {"input": photo(40), "edited": noise(140), "prompt": "never scored"}])
    code, got, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0 and got["imported"] == 4, err
    with db.session() as s:
        return [e.id for e in s.scalars(select(Edit).order_by(Edit.id))]


def test_export_by_decision_with_metrics_reasons_and_verdict(db: Any, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    ids = _imported(db, tmp_path, capsys)
    verdict = {"instruction": 9, "overall": 8.5, "reasons": "follows the instruction"}
    assert _decide(db, ids[0], GOOD, judge=verdict) == "accepted"
    assert _decide(db, ids[1], LOST) == "rejected"
    assert _decide(db, ids[2], NO_FACE) == "rejected"

    code, got, err = _cli(capsys, "export", str(tmp_path / "acc"), "--json")
    assert code == 0, err
    assert got["rows"] == 1 and got["by_decision"] == {"accepted": 1}
    acc = datasets.load_dataset(str(tmp_path / "acc"), split="train")
    row = acc[0]
    assert row["edit_id"] == ids[0] and row["decision"] == "accepted" and row["reasons"] == []
    assert row["origin"] == "imported" and row["identity_distance"] == pytest.approx(0.2)
    assert json.loads(row["judge"]) == verdict
    assert isinstance(row["input_image"], Image.Image) and isinstance(row["edited_image"], Image.Image)
    assert len(row["garment_images"]) == 1 and row["edit_prompt"] == "make the jacket red"
    assert {"input_image", "edited_image", "edit_prompt", "source_paths", "provenance", "seed",
            "edit_model", "ssim", "mad", "overall", "faces_edited"} <= set(acc.column_names)

    code, got, err = _cli(capsys, "export", str(tmp_path / "neg"), "--decision", "rejected", "--format",
                          "parquet", "--json")
    assert code == 0, err
    neg = datasets.load_dataset("parquet", data_dir=str(tmp_path / "neg"), split="train")
    assert {r["edit_id"]: (r["decision"], r["reasons"]) for r in neg} == {
        ids[1]: ("rejected", ["identity_lost"]), ids[2]: ("rejected", ["no_face"])}
    by_id = {r["edit_id"]: r for r in neg}
    assert by_id[ids[2]]["identity_distance"] is None and by_id[ids[2]]["faces_edited"] == 0
    assert by_id[ids[1]]["judge"] == "{}"  # a judge score without details: empty verdict, not invented
    assert json.loads(by_id[ids[1]]["failed_checks"])["identity_lost"]["value"] == pytest.approx(0.7)

    code, got, err = _cli(capsys, "export", str(tmp_path / "all"), "--decision", "all", "--json")
    assert code == 0, err
    every = datasets.load_dataset(str(tmp_path / "all"), split="train")
    assert sorted(every["edit_id"]) == ids and got["by_decision"] == {"accepted": 1, "rejected": 2, "unscored": 1}
    assert {r["edit_id"]: r["decision"] for r in every}[ids[3]] == ""

    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    by_recipe = summary["decisions"]["by_recipe"]
    assert by_recipe["tryon"] == {"accepted": 1, "rejected": 0, "unscored": 0, "reasons": {}}
    assert by_recipe["enrich"] == {"accepted": 0, "rejected": 2, "unscored": 1,
                                   "reasons": {"identity_lost": 1, "no_face": 1}}
    assert summary["decisions"]["by_site"]["(local files)"]["rejected"] == 2

    sheet = (tmp_path / "all" / "contact_sheet.html").read_text()
    assert sheet.index('class="card accepted"') < sheet.index('class="card rejected"') < sheet.index('class="card "')
    assert "overflow-wrap: anywhere" in sheet and "<svg" in sheet and "http" not in sheet.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    # identity_distance's histogram carries the threshold the decisions used (identity_max 0.6)
    hist = sheet[sheet.index('aria-label="histogram of identity_distance"'):]
    assert 'class="threshold"' in hist[:hist.index("</svg>")] and "max 0.6" in hist[:hist.index("</svg>")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing here depends on the database
def test_export_refuses_a_folder_it_did_not_write_and_says_when_nothing_matches(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _imported(db, tmp_path, capsys)

    # nothing scored yet: the default (accepted) has no rows; nothing is written
    code, out, err = _cli(capsys, "export", str(tmp_path / "empty"), "--json")
    assert code == 2 and "no edits to export with --decision accepted" in err and "not scored 4" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "empty").exists()

    user = tmp_path / "users-folder"
    (user / "train").mkdir(parents=True)
    (user / "train" / "mine.jpg").write_bytes(b"my own photo")
    (user / "data").mkdir()
    (user / "data" / "notes.txt").write_text("keep me")
    code, out, err = _cli(capsys, "export", str(user), "--decision", "all")
    assert code == 2 and "not empty" in err and ".synthpipe-export" in err and len(err.strip().splitlines()) == 1
    assert (user / "train" / "mine.jpg").read_bytes() == b"my own photo"
    assert (user / "data" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in user.iterdir()) == ["data", "train"]

    # a folder the export wrote is replaced on re-export; a file the user added beside it stays
    ours = tmp_path / "ours"
    assert _cli(capsys, "export", str(ours), "--decision", "all")[0] == 0
    (ours / "README.txt").write_text("my notes")
    _decide(db, ids[0], GOOD)
    code, got, err = _cli(capsys, "export", str(ours), "--json")
    assert code == 0, err
    assert got["rows"] == 1 and (ours / "README.txt").read_text() == "my notes"
    assert len((ours / "train" / "metadata.jsonl").read_text().splitlines()) == 1
    code, got, err = _cli(capsys, "export", str(ours), "--format", "parquet", "--json")
    assert code == 0, err
    assert not (ours / "train").exists() and (ours / "data").is_dir() and (ours / "README.txt").exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing here depends on the database
def test_own_export_reimports_into_a_fresh_store(db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.store.db import get_database, reset_databases
    from common.store.rows import Edit, ItemSet

    _imported(db, tmp_path, capsys)
    for fmt in ("imagefolder", "parquet"):
        assert _cli(capsys, "export", str(tmp_path / f"out-{fmt}"), "--decision", "all", "--format", fmt)[0] == 0

    for fmt in ("imagefolder", "parquet"):
        fresh = tmp_path / f"fresh-{fmt}"
        monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", f"sqlite:///{fresh / 'db.sqlite'}")
        monkeypatch.setenv("SYNTHPIPE_STORAGE_URL", (fresh / "objects").as_uri())
        reset_settings()
        reset_databases()
        code, got, err = _cli(capsys, "import", str(tmp_path / f"out-{fmt}"), "--json")
        assert code == 0, err
        assert got["imported"] == 4 and got["rejected"] == [], got
        with get_database().session() as s:
            edits = s.scalars(select(Edit).order_by(Edit.id)).all()
            assert sorted(e.edit_prompt or "" for e in edits) == sorted(
                ["make the jacket red", "relight the scene at dusk", "x" * 3000, "never scored"])
            recipes = {e.edit_prompt: s.get(ItemSet, e.item_set_id).recipe for e in edits}
            assert recipes["make the jacket red"] == "tryon" and recipes["never scored"] == "enrich"
            jacket = next(e for e in edits if e.edit_prompt == "make the jacket red")
            assert [m.role for m in s.get(ItemSet, jacket.item_set_id).members] == ["person", "garment"]
            assert jacket.provenance["source"]["origin"] == "imported"  # the exported row's columns


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing here depends on the database
def test_contact_sheet_cards_hold_long_prompts_in_chromium(db: Any, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A 3000-character prompt with no break must wrap inside its card, measured in a real browser."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ids = _imported(db, tmp_path, capsys)
    _decide(db, ids[2], GOOD)  # the long-prompt edit
    _decide(db, ids[1], LOST)
    assert _cli(capsys, "export", str(tmp_path / "out"), "--decision", "all")[0] == 0
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get((tmp_path / "out" / "contact_sheet.html").as_uri())
        cards = driver.execute_script(
            "return [...document.querySelectorAll('.card')].map(c => ({cls: c.className, "
            "scroll: c.scrollWidth, client: c.clientWidth, right: c.getBoundingClientRect().right, "
            "text: c.querySelector('.prompt').textContent.length}))")
        page = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    finally:
        driver.quit()
    assert [c["cls"] for c in cards] == ["card accepted", "card rejected", "card ", "card "]
    assert cards[0]["text"] == 3000  # the long prompt, shown first: its edit is the accepted one
    assert all(c["scroll"] <= c["client"] for c in cards), cards
    assert page[0] <= page[1]  # nothing sticks out of the page either


def _real_photo_pairs(root: Path) -> Path:
    """Real face photos (public domain, shipped in scikit-image and matplotlib): the astronaut
    against herself relit, against Grace Hopper, and against noise; 256 px keeps dlib quick."""
    import matplotlib.cbook
    from PIL import ImageEnhance
    from skimage import data

    astronaut = Image.fromarray(data.astronaut()).resize((256, 256))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
        hopper = Image.open(fh).convert("RGB").resize((256, 300))
    relit = ImageEnhance.Brightness(astronaut).enhance(0.6)

    def encoded(im: Image.Image) -> bytes:
        return png(np.asarray(im))

    return _imagefolder(root, [
        {"input": encoded(astronaut), "edited": encoded(relit), "prompt": "relight her as at dusk"},
        {"input": encoded(astronaut), "edited": encoded(hopper), "prompt": "give her a naval uniform"},
        {"input": encoded(astronaut), "edited": noise(7, side=256), "prompt": "paint it abstract"},
    ])


def test_real_photos_import_score_export_give_the_right_decisions(
        db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`synthpipe import` -> `run --stage score` -> `export`, with the real dlib face weights."""
    import datasets

    from common.core.settings import reset_settings

    monkeypatch.setenv("SYNTHPIPE_SCORE__SCORERS", "change,identity")
    reset_settings()
    folder = _real_photo_pairs(tmp_path / "pairs")
    code, got, err = _cli(capsys, "import", str(folder), "--json")
    assert code == 0 and got["imported"] == 3 and got["score_jobs"] == 3, err
    code, out, err = _cli(capsys, "run", "--stage", "score")
    assert code == 0, err
    code, got, err = _cli(capsys, "export", str(tmp_path / "all"), "--decision", "all", "--json")
    assert code == 0, err
    rows = {r["edit_prompt"]: r for r in datasets.load_dataset(str(tmp_path / "all"), split="train")}
    relit, other, noise = (rows[p] for p in ("relight her as at dusk", "give her a naval uniform",
                                             "paint it abstract"))
    assert (relit["decision"], relit["reasons"]) == ("accepted", [])
    assert relit["identity_distance"] < 0.6 < other["identity_distance"]
    assert (other["decision"], other["reasons"]) == ("rejected", ["identity_lost"])
    assert (noise["decision"], noise["reasons"]) == ("rejected", ["no_face"])
    assert noise["faces_input"] == 1 and noise["faces_edited"] == 0
    assert all(r["origin"] == "imported" for r in rows.values())

    code, got, err = _cli(capsys, "export", str(tmp_path / "negatives"), "--decision", "rejected", "--json")
    assert code == 0 and got["rows"] == 2, err
    summary = json.loads((tmp_path / "negatives" / "summary.json").read_text())
    assert summary["decisions"]["by_recipe"]["enrich"]["reasons"] == {"identity_lost": 1, "no_face": 1}
