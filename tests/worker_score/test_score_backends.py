"""Scorer backends on real photos shipped inside packages (scikit-image's astronaut, matplotlib's
Grace Hopper; both public domain), real dlib face weights, and tiny random CLIP and DINOv2
checkpoints built offline and loaded back through ``from_pretrained``. No mocks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fixtures.photos import ASTRONAUT_FACE, photos
from PIL import Image

from common.core.errors import ConfigError, ErrorKind
from common.core.settings import ScoreSettings, load_settings
from common.domain.decide import decide
from common.domain.scoring import ScoreItem, Scorer
from worker_score.backends import get_scorer
from worker_score.backends.garment import torso_box

SAME_PERSON = 0.6  # dlib's own threshold


@pytest.fixture(scope="module")
def pics() -> dict[str, Image.Image]:
    return photos()


def _items(pics: dict[str, Image.Image], *names: str, prompt: str | None = "make it darker") -> list[ScoreItem]:
    return [ScoreItem(key=n, input_image=pics["input"], edited_image=pics[n], prompt=prompt) for n in names]


# --- identity (real dlib weights) --------------------------------------------------------------


def test_identity_tells_the_same_person_from_another_and_noise_from_a_face(pics: dict[str, Image.Image]) -> None:
    scorer = get_scorer("identity", upsample=0, max_side=512)
    assert isinstance(scorer, Scorer)
    scorer.load()
    out = dict(zip(["unchanged", "relit", "background", "other", "noise"],
                   scorer.run_batch(_items(pics, "unchanged", "relit", "background", "other", "noise")), strict=True))
    assert all(o.error is None for o in out.values())
    assert out["unchanged"].metrics["identity_distance"] < 1e-6
    for same in ("relit", "background"):
        assert out[same].metrics["faces_edited"] >= 1
        assert 0.0 < out[same].metrics["identity_distance"] < SAME_PERSON, same
    assert np.asarray(pics["background"]).mean() != pytest.approx(np.asarray(pics["input"]).mean(), abs=5)
    assert out["other"].metrics["identity_distance"] > SAME_PERSON
    assert out["noise"].metrics == {"faces_input": 1.0, "faces_edited": 0.0}  # no distance without a face
    thresholds = ScoreSettings().thresholds_for("tryon")
    assert decide({"identity": out["background"].metrics}, {}, "tryon", thresholds).reasons == []
    assert decide({"identity": out["other"].metrics}, {}, "tryon", thresholds).reasons == ["identity_lost"]
    assert decide({"identity": out["noise"].metrics}, {}, "tryon", thresholds).reasons == ["no_face"]


# --- change ------------------------------------------------------------------------------------


def test_change_tells_unchanged_relit_and_changed_apart(pics: dict[str, Image.Image]) -> None:
    scorer = get_scorer("change", side=128)
    scorer.load()
    tiny = ScoreItem("tiny", pics["input"], Image.new("RGB", (4, 4)))
    names = ["unchanged", "relit", "recoloured", "other"]
    outs = scorer.run_batch([*_items(pics, *names[:2]), tiny, *_items(pics, *names[2:])])
    bad = outs.pop(2)
    assert bad.error_code == "score.image_too_small" and bad.error_kind == ErrorKind.INPUT  # it alone failed
    m = {n: o.metrics for n, o in zip(names, outs, strict=True)}
    assert m["unchanged"]["mad"] == 0.0 and m["unchanged"]["ssim"] == pytest.approx(1.0)
    # recolouring keeps the structure (SSIM as high as an unchanged photo's) but moves the colour
    assert m["recoloured"]["ssim"] > 0.98 and m["recoloured"]["mad"] > 0.03
    assert m["relit"]["mad"] > 0.1 and m["relit"]["changed_fraction"] > 0.5
    assert m["other"]["ssim"] < 0.3 and m["other"]["ssim"] < m["relit"]["ssim"]
    thresholds = ScoreSettings().thresholds_for("enrich")
    reasons = {n: decide({"change": v}, {}, "enrich", thresholds).reasons for n, v in m.items()}
    assert reasons == {"unchanged": ["no_change"], "relit": [], "recoloured": [], "other": []}


# --- tiny CLIP and DINOv2 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_score_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from common.devkit.tinymodels import build_one

    out = tmp_path_factory.mktemp("score-models")
    return {name: build_one(name, out) for name in ("clip", "dino")}


#: clip on (astronaut -> relit, "make it darker"): pinned so a changed preprocessing, tokenizer
#: or feature path is caught, not only "deterministic"
CLIP_EXPECTED = {"clip_image": 0.745407, "clip_direction": -0.071862, "clip_text": 0.239518}
DINO_EXPECTED = 0.914576


def test_tiny_clip_loads_back_and_scores_deterministically(tiny_score_models: dict[str, Path],
                                                            pics: dict[str, Image.Image]) -> None:
    scorer = get_scorer("clip", model=str(tiny_score_models["clip"]), device="cpu", max_batch=2)
    scorer.load()
    assert scorer.model.config.projection_dim == 16 and scorer.pre.crop == 32  # the saved checkpoint
    broken = Image.open(io.BytesIO(_png(pics["relit"])[:300]))  # a truncated file: fails when read
    items = [*_items(pics, "relit", "unchanged"), ScoreItem("broken", pics["input"], broken, "x"),
             *_items(pics, "other", prompt=None)]
    first, again = scorer.run_batch(items), scorer.run_batch(items)
    assert first[2].error is not None and first[2].error_code == "score.crashed"  # the one bad item only
    relit, unchanged, other = first[0].metrics, first[1].metrics, first[3].metrics
    assert set(relit) == {"clip_image", "clip_direction", "clip_text"}
    assert set(other) == {"clip_image"}  # no instruction: no text metrics
    assert unchanged["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert unchanged["clip_direction"] == pytest.approx(0.0, abs=1e-3)  # no image delta
    for a, b in zip(first, again, strict=True):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-6)
    assert relit == pytest.approx(CLIP_EXPECTED, abs=1e-4)
    assert -1.0 <= other["clip_image"] <= 1.0


def test_tiny_dino_loads_back_and_scores_deterministically(tiny_score_models: dict[str, Path],
                                                            pics: dict[str, Image.Image]) -> None:
    scorer = get_scorer("dino", model=str(tiny_score_models["dino"]), device="cpu", max_batch=8)
    scorer.load()
    assert scorer.model.config.hidden_size == 32
    outs = scorer.run_batch(_items(pics, "relit", "unchanged", "noise"))
    sims = [o.metrics["dino_similarity"] for o in outs]
    assert sims[1] == pytest.approx(1.0, abs=1e-5)
    assert sims[0] == pytest.approx(DINO_EXPECTED, abs=1e-4)
    assert sims[2] < sims[0]  # noise is further from the photo than its relit version
    assert [o.metrics for o in scorer.run_batch(_items(pics, "relit"))] == [pytest.approx(outs[0].metrics, abs=1e-5)]


def test_garment_scorer_finds_the_worn_garment_below_the_face(tiny_score_models: dict[str, Path],
                                                               pics: dict[str, Image.Image]) -> None:
    scorer = get_scorer("garment", model=str(tiny_score_models["dino"]), device="cpu", upsample=0, max_side=512)
    scorer.load()
    edited = pics["relit"]
    face = scorer.faces.faces(edited, describe_largest=False)[0]
    assert (face.left, face.top, face.right, face.bottom) == pytest.approx(ASTRONAUT_FACE, abs=3)
    box = torso_box(edited.size, face)
    assert box[1] > face.bottom  # the clothing is below the chin
    worn = edited.crop(box)
    noise = pics["noise"].resize(worn.size)
    items = [ScoreItem("worn", pics["input"], edited, "wear it", garments=[noise, worn]),
             ScoreItem("other", pics["input"], edited, "wear it", garments=[noise]),
             ScoreItem("enrich", pics["input"], edited, "relight", recipe="enrich")]
    worn_out, other_out, enrich_out = scorer.run_batch(items)
    assert worn_out.metrics["garment_max"] == pytest.approx(1.0, abs=1e-4)  # the garment it wears
    assert worn_out.metrics["garment_mean"] < worn_out.metrics["garment_max"]
    assert worn_out.metrics["garment_torso_found"] == 1.0
    assert other_out.metrics["garment_max"] < worn_out.metrics["garment_max"]
    assert enrich_out.metrics == {} and enrich_out.error is None  # nothing to compare: no threshold applies


# --- settings and decisions --------------------------------------------------------------------


def test_scorers_setting_is_comma_separated_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHPIPE_SCORE__SCORERS", "change, identity")
    monkeypatch.setenv("SYNTHPIPE_SCORE__ENRICH__IDENTITY_MAX", "0.5")
    s = load_settings()
    assert s.score.scorers == ["change", "identity"]
    assert s.score.thresholds_for("enrich")["identity_max"] == 0.5
    assert s.score.thresholds_for("tryon")["identity_max"] == 0.6
    assert s.score.thresholds_for("tryon")["clip_image_min"] == 0.7 and s.score.thresholds_for("enrich")["garment_min"] is None
    monkeypatch.setenv("SYNTHPIPE_SCORE__SCORERS", "change,clipp")
    with pytest.raises(ConfigError, match=r"score.scorers .*clipp.*allowed: .*change, clip, dino"):
        load_settings()
    monkeypatch.delenv("SYNTHPIPE_SCORE__SCORERS")
    monkeypatch.setenv("SYNTHPIPE_REVIEW__TAGS", "blurry, wrong_garment,other")  # every list setting reads a,b,c
    assert load_settings().review.tags == ["blurry", "wrong_garment", "other"]
    monkeypatch.setenv("SYNTHPIPE_REVIEW__TAGS", "blurry,Bad Tag")
    with pytest.raises(ConfigError, match="review.tags"):
        load_settings()


def test_a_threshold_applies_only_to_computed_metrics() -> None:
    thresholds = ScoreSettings().thresholds_for("tryon")
    clip_only = decide({"clip": {"clip_image": 0.9}}, {}, "tryon", thresholds)
    assert clip_only.decision == "accepted" and clip_only.margin == pytest.approx(0.2)
    low = decide({"clip": {"clip_image": 0.65, "clip_direction": 0.1, "clip_text": 0.3}, "dino": {"dino_similarity": 0.5}},
                 {"judge": "judge.unparseable", "garment": "score.crashed"}, "tryon", thresholds)
    assert low.decision == "rejected"
    assert low.reasons == ["clip_image_low", "clip_direction_low", "judge_failed", "score_failed"]
    assert low.failed["clip_image_low"] == {"metric": "clip.clip_image", "value": 0.65, "threshold": 0.7}
    assert low.failed["score_failed"] == {"scorers": {"garment": "score.crashed"}}
    assert low.margin == pytest.approx(0.05)
    judged = decide({"judge": {"judge_overall": 6.5}}, {}, "tryon", {**thresholds, "judge_min": 7.0})
    assert judged.reasons == ["judge_low"] and judged.margin == pytest.approx(0.05)  # 0-10 ratings, scaled
    unchanged = decide({"change": {"ssim": 0.99, "mad": 0.004}}, {}, "tryon", thresholds)
    assert unchanged.reasons == ["no_change"] and unchanged.margin == pytest.approx(0.006)
    relit = decide({"change": {"ssim": 0.99, "mad": 0.2}}, {}, "tryon", thresholds)
    assert relit.decision == "accepted" and relit.margin == pytest.approx(0.19)
    off = decide({"judge": {"judge_overall": 6.5}}, {}, "tryon", {**thresholds, "judge_min": None})
    assert off.decision == "accepted" and off.margin is None


@pytest.mark.parametrize(("scorer", "metric", "key", "limit", "bad", "good", "code"), [
    ("clip", "clip_text", "clip_text_min", 0.2, 0.15, 0.25, "clip_text_low"),
    ("dino", "dino_similarity", "dino_min", 0.4, 0.3, 0.5, "dino_low"),
    ("garment", "garment_max", "garment_min", 0.3, 0.2, 0.4, "garment_low"),
    ("change", "ssim", "ssim_max", 0.9, 0.95, 0.85, "ssim_too_high"),
    ("change", "ssim", "ssim_min", 0.2, 0.1, 0.3, "ssim_too_low"),
    ("change", "mad", "mad_max", 0.3, 0.4, 0.2, "change_too_large"),
    ("identity", "identity_distance", "identity_max", 0.6, 0.7, 0.5, "identity_lost"),
    ("judge", "judge_overall", "judge_min", 7.0, 6.0, 8.0, "judge_low"),
])
def test_each_threshold_rejects_on_its_side_only_with_its_own_code(
        scorer: str, metric: str, key: str, limit: float, bad: float, good: float, code: str) -> None:
    off = {k: None for k in ScoreSettings().thresholds_for("tryon")}  # only the threshold under test applies
    rejected = decide({scorer: {metric: bad}}, {}, "tryon", {**off, key: limit})
    assert rejected.decision == "rejected" and rejected.reasons == [code]
    assert rejected.failed[code] == {"metric": f"{scorer}.{metric}", "value": bad, "threshold": limit}
    assert decide({scorer: {metric: good}}, {}, "tryon", {**off, key: limit}).decision == "accepted"
    assert decide({scorer: {metric: bad}}, {}, "tryon", off).decision == "accepted"  # None turns it off


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
