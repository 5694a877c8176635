"""`synthpipe flywheel --target character` on tiny random FLUX weights, identity from the real dlib model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import stage_context
from PIL import Image
from sqlalchemy import func, select

from common.cli import main
from common.store.rows import Adapter, Edit, Job, Review, Reviewer, Score, Snapshot

# these FLUX-sized tiny models run on one torch thread (several workers share 2 cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _counts(ctx) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        return (s.scalar(select(func.count()).select_from(Edit)) or 0,
                s.scalar(select(func.count()).select_from(Adapter)) or 0,
                s.scalar(select(func.count()).select_from(Job)) or 0)


def test_character_flywheel_two_rounds_report_and_rerun(tiny_models: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from skimage import data

    from common.core.settings import reset_settings
    from common.dataset.ingest import ingest

    use_tiny_models(monkeypatch, tiny_models)
    for key, value in {"TRAIN__CHARACTER_STEPS": "4", "TRAIN__CHARACTER_LR": "0.2", "TRAIN__CHARACTER_RESOLUTION": "32",
                       "TRAIN__CHARACTER_RANK": "4", "TRAIN__BATCH_SIZE": "1", "TRAIN__DEVICE": "cpu",
                       "PAIRING__ENRICH_VARIATIONS": "1", "SCORE__SCORERS": "change,identity,dino",
                       "IMAGES__MIN_SIDE": "32"}.items():
        monkeypatch.setenv(f"SYNTHPIPE_{key}", value)
    reset_settings()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((256, 256)).save(photo)
    ctx = stage_context()
    assert ingest(photo, "character", db=ctx.db, storage=ctx.storage, settings=ctx.settings).registered == 1

    out = tmp_path / "cfw"
    flags = ["flywheel", "--target", "character", "--character", str(photo), "--rounds", "2", "--n", "3",
             "--out", str(out), "--json"]
    assert main([*flags[:6], "1", *flags[7:]]) == 0  # round 1 alone; a person then accepts its images
    with ctx.db.session() as s:
        first = s.scalars(select(Adapter).where(Adapter.target == "character")).one()
        made = list(s.scalars(select(Edit.id).where(Edit.adapter_id == first.id, Edit.origin == "generated")))
        person = Reviewer(name="ana", password_hash="not-used-here")
        s.add(person)
        s.flush()
        s.add_all(Review(reviewer_id=person.id, edit_id=e, decision="accepted") for e in made)
    assert main(flags) == 0  # the same run goes on with round 2
    capsys.readouterr()
    with ctx.db.session() as s:  # round 2 trained on what was accepted by then: round 1's images too
        second = s.scalars(select(Adapter).where(Adapter.target == "character", Adapter.round == 2)).one()
        snap = s.get(Snapshot, second.snapshot_id)
        assert len(made) == 3 and set(made) <= set(snap.edit_ids) and snap.selection["generated"] == 3
        assert snap.edit_ids[:3] == sorted(made)  # people-accepted first
        first_snap = s.get(Snapshot, first.snapshot_id)
        assert first_snap.selection["generated"] == 0 and first_snap.id != snap.id

    def no_nan(name: str) -> None:
        raise AssertionError(f"report.json holds {name}")

    report = json.loads((out / "report.json").read_text(), parse_constant=no_nan)
    assert report["target"] == "character" and [r["round"] for r in report["rounds"]] == [1, 2]
    r1, r2 = report["rounds"]
    assert r1["adapter"] != r2["adapter"]
    limit = ctx.settings.score.thresholds_for("enrich")["identity_max"]
    with ctx.db.session() as s:
        # round 1 trained after the enrich set went through vl -> edit -> score
        enrich = s.scalars(select(Edit).where(Edit.origin == "pipeline")).all()
        assert len(enrich) == 1 and s.scalar(select(Score.id).where(Score.edit_id == enrich[0].id)) is not None
        seeds = []
        for r in report["rounds"]:
            edits = s.scalars(select(Edit).where(Edit.adapter_id == r["adapter"], Edit.origin == "generated")
                              .order_by(Edit.id)).all()
            assert r["generated"] == len(edits) == 3 and r["requested"] == 3
            identity = {sc.edit_id: sc.metrics for sc in s.scalars(
                select(Score).where(Score.edit_id.in_([e.id for e in edits]), Score.scorer == "identity"))}
            assert set(identity) == {e.id for e in edits}  # every generated image was scored for identity
            # the real face model finds the astronaut's face in the source photo
            assert all(m["faces_input"] >= 1 for m in identity.values())
            kept = [1.0 if identity[e.id].get("identity_distance", float("inf")) < limit else 0.0 for e in edits]
            assert r["identity_kept"] == pytest.approx(sum(kept) / 3) and r["identity_max"] == limit
            assert r["identity_kept_goal"] == 0.7 and r["meets_goal"] == (r["identity_kept"] >= 0.7)
            assert r["with_face"] == sum(1 for m in identity.values() if m["faces_edited"] >= 1)
            assert [i["edit_id"] for i in r["images"]] == [e.id for e in edits]
            assert [i["kept"] for i in r["images"]] == kept
            assert r["diversity_all"]["pairs"] == 3 and 0.0 <= r["diversity_all"]["mean"] <= 2.0
            lo, hi = r["diversity_all"]["ci95"]
            assert lo <= r["diversity_all"]["mean"] <= hi
            assert r["diversity"]["images"] == r["accepted"]
            assert r["diversity"]["pairs"] == r["accepted"] * (r["accepted"] - 1) // 2
            if r["accepted"] < 2:
                assert r["diversity"]["mean"] is None and r["diversity"]["ci95"] is None
            assert r["judge"] is None  # the judge was not among the scorers
            seeds.append([e.seed for e in edits])
        assert seeds[0] == seeds[1]  # round 2 generates again with the same seeds
    assert [c["round"] for c in report["comparisons"]] == [2]
    comp = report["comparisons"][0]
    assert comp["identity_kept"]["pairs"] == 3
    assert comp["identity_kept"]["diff"] == pytest.approx(r2["identity_kept"] - r1["identity_kept"])
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and page.count("data:image/png;base64,") == 2 and "identity kept" in page and "70 %" in page

    counts = _counts(ctx)
    assert main(flags) == 0  # a rerun continues: nothing is queued or made again
    assert _counts(ctx) == counts
    assert json.loads((out / "report.json").read_text())["rounds"] == report["rounds"]


def test_flywheel_flags_say_what_is_missing(tiny_models: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_models(monkeypatch, tiny_models)
    out = str(tmp_path / "x")
    assert main(["flywheel", "--target", "character", "--rounds", "1", "--out", out]) == 2
    assert "--character ASSET" in capsys.readouterr().err
    assert main(["flywheel", "--target", "character", "--character", "42", "--rounds", "1", "--out", out]) == 2
    assert "no stored photo" in capsys.readouterr().err
    assert main(["flywheel", "--rounds", "1", "--out", out]) == 2
    assert "--eval-sets" in capsys.readouterr().err
    assert main(["flywheel", "--rounds", "1", "--eval-sets", "2", "--n", "3", "--out", out]) == 2
    assert "--target character" in capsys.readouterr().err
