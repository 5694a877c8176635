"""`synthpipe flywheel` end to end on tiny models in local mode: score stage included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.models import use_tiny_models
from fixtures.pipeline import make_edits, stage_context
from sqlalchemy import func, select

from common.store.rows import Adapter, Edit, Snapshot


@pytest.fixture
def tiny(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    use_tiny_models(monkeypatch, tiny_models)
    for key, value in {
        "SYNTHPIPE_SCORE__SCORERS": "change,clip",
        "SYNTHPIPE_IMAGES__MIN_SIDE": "32",  # tiny edits are 48x64
        # tiny random CLIP: only the image-image threshold tells these edits apart
        "SYNTHPIPE_SCORE__TRYON__CLIP_DIRECTION_MIN": "-1",
        "SYNTHPIPE_SCORE__TRYON__CLIP_TEXT_MIN": "-1",
        "SYNTHPIPE_SCORE__TRYON__CLIP_IMAGE_MIN": "0.7",
    }.items():
        monkeypatch.setenv(key, value)
    from common.core.settings import reset_settings

    reset_settings()
    return tiny_models


def test_flywheel_two_rounds_four_eval_sets_local_mode_and_rerun_continues(tiny, tmp_path: Path) -> None:
    from common.cli import main
    from common.runtime.runner import run_all

    make_edits(tmp_path, persons=3, garments=3, tryon=6)
    run_all(stage_context(), ["score"])
    out = tmp_path / "fw"
    flags = ["flywheel", "--rounds", "2", "--eval-sets", "4", "--out", str(out), "--steps", "8", "--lr", "3e-2",
             "--resolution", "64", "--json"]
    assert main(flags) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "edit" and [r["round"] for r in report["rounds"]] == [0, 1, 2]
    r0, r1, r2 = report["rounds"]
    assert r0["adapter"] is None and r1["adapter"] is not None and r2["adapter"] not in (None, r1["adapter"])
    for r in report["rounds"]:
        assert r["eval_edits"] == 4 and r["acceptance"] == r["accepted"] / 4
        assert set(r["metrics"]) >= {"clip.clip_image", "change.ssim"}
        for m in r["metrics"].values():
            assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert [c["round"] for c in report["comparisons"]] == [1, 2]
    # 4 held-out items are fewer than train.min_eval_items: no round is called better or worse on them
    assert all(c["acceptance"]["verdict"] == "not enough evidence" for c in report["comparisons"])
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 4 and "not enough evidence" in page  # charts inline, the strip a PNG
    assert page.count("data:image/png;base64,") == 1
    state = json.loads((out / "flywheel.json").read_text())
    ctx = stage_context()
    with ctx.db.session() as s:
        held_out = set(state["eval_item_sets"])
        for snap in s.scalars(select(Snapshot)):
            trained_on = {s.get(Edit, e).item_set_id for e in snap.edit_ids}
            assert not trained_on & held_out  # held-out sets are never trained on
        round_edits = s.scalars(select(Edit).where(Edit.adapter_id == r1["adapter"])).all()
        assert sorted(e.item_set_id for e in round_edits) == sorted(held_out)
        base_seeds = {e.item_set_id: e.seed for e in s.scalars(select(Edit).where(Edit.adapter_id.is_(None)))
                      if e.item_set_id in held_out and e.params.get("edit_adapter_id") is None}
        assert all(base_seeds.get(e.item_set_id) == e.seed for e in round_edits)  # same seeds every round
        counts = (s.scalar(select(func.count()).select_from(Edit)), s.scalar(select(func.count()).select_from(Adapter)))
    assert main(flags) == 0  # a rerun continues: nothing is made again
    with ctx.db.session() as s:
        assert (s.scalar(select(func.count()).select_from(Edit)),
                s.scalar(select(func.count()).select_from(Adapter))) == counts
    assert json.loads((out / "report.json").read_text())["rounds"] == report["rounds"]
