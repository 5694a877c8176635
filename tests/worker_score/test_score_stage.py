"""The score stage end to end: edits in the real store -> `synthpipe run --stage score` ->
scores and decisions with the right reason codes, on SQLite and PostgreSQL; `score --redecide`
without loading a model; `score --rescore` of one scorer; edit -> score chained through real
Celery workers, one of them SIGKILLed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.cluster import Cluster, ingest_photos
from fixtures.net import wait_for
from fixtures.photos import photos
from PIL import Image
from sqlalchemy import func, select

from common.cli import main
from common.domain.scorequeue import queue_score
from common.media.assets import Provenance, register_image_bytes
from common.store.rows import Decision, Edit, ItemSet, ItemSetAsset, Job, Score
from common.store.storage import get_storage

#: tiny random CLIP/DINOv2 have no opinion worth thresholding: their thresholds are opened here,
#: so the decisions below come from the change and identity scorers (the real ones)
OPEN_MODEL_THRESHOLDS = {f"SYNTHPIPE_SCORE__TRYON__{k}": "-1" for k in
                         ("CLIP_IMAGE_MIN", "CLIP_DIRECTION_MIN", "CLIP_TEXT_MIN", "DINO_MIN", "GARMENT_MIN")}
FAST_FACES = {"SYNTHPIPE_SCORE__FACE_UPSAMPLE": "0", "SYNTHPIPE_SCORE__FACE_MAX_SIDE": "512"}


@pytest.fixture(scope="module")
def pics() -> dict[str, Image.Image]:
    return photos()


@pytest.fixture
def score_env(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> dict[str, str]:
    from common.core.settings import reset_settings
    from common.devkit.tinymodels import build_one

    env = {"SYNTHPIPE_SCORE__CLIP_MODEL": str(build_one("clip", tiny_dir)),
           "SYNTHPIPE_SCORE__DINO_MODEL": str(build_one("dino", tiny_dir)),
           "SYNTHPIPE_SCORE__DEVICE": "cpu", "SYNTHPIPE_SCORE__BATCH_SIZE": "3", **FAST_FACES, **OPEN_MODEL_THRESHOLDS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    return env


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _add_edits(pics: dict[str, Image.Image], cases: list[str]) -> dict[str, int]:
    """One try-on edit per case (input photo + one garment photo -> the case's photo), written
    through the real store and queued for scoring as an imported edit would be."""
    from common.core.settings import get_settings
    from common.store.db import get_database

    settings = get_settings()
    db, storage = get_database(settings.database_url), get_storage(settings.storage_url)
    ids = {}
    with db.session() as s:
        person = register_image_bytes(s, _png(pics["input"]), role="person", provenance=Provenance(), storage=storage,
                                      limits=settings.images)
        garment = register_image_bytes(s, _png(pics["input"].crop((150, 300, 400, 512))), role="garment",
                                       provenance=Provenance(), storage=storage, limits=settings.images)
        for case in cases:
            item = ItemSet(key=f"test:{case}", recipe="tryon", keywords={}, seed=0)
            item.members = [ItemSetAsset(position=0, asset_id=person.asset_id, role="person"),
                            ItemSetAsset(position=1, asset_id=garment.asset_id, role="garment")]
            s.add(item)
            s.flush()
            edited = pics.get(case, pics["relit"])
            stored = storage.put(_png(edited), "png")
            uri = stored.uri if case != "missing" else stored.uri.replace(stored.sha256, "0" * 64)
            edit = Edit(item_set_id=item.id, origin="imported", edit_prompt="make the photo darker",
                        import_key=f"test:{case}", backend="imported", model_id="", params={}, seed=0,
                        output_uri=uri, output_sha256=stored.sha256, width=edited.width, height=edited.height,
                        timings={})
            s.add(edit)
            s.flush()
            assert queue_score(s, edit.id, item_set_id=item.id) is not None
            assert queue_score(s, edit.id, item_set_id=item.id) is None  # queueing twice is harmless
            ids[case] = edit.id
    return ids


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _decisions(db) -> dict[int, tuple[str, list[str]]]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return {d.edit_id: (d.decision, list(d.reasons)) for d in s.execute(select(Decision)).scalars()}


REDECIDE_PROBE = """
import json, sys
from common.cli import main
code = main(["score", "--redecide", "--json"])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "dlib", "skimage", "worker_score"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_score_stage_decides_with_reason_codes_redecides_without_models_and_rescores_one_scorer(
        db, score_env: dict[str, str], pics: dict[str, Image.Image], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _add_edits(pics, ["relit", "unchanged", "other", "noise", "missing"])
    ran = _cli_json(capsys, "run", "--stage", "score")
    assert ran["score"]["succeeded"] == 4 and ran["score"]["failed"] == 1, ran
    with db.session() as s:
        failed = s.execute(select(Job).where(Job.stage == "score", Job.status == "failed")).scalar_one()
        assert failed.reason == "score.edit_image_missing" and failed.payload["edit_id"] == ids["missing"]
        n_scores = s.scalar(select(func.count()).select_from(Score))
        margins = s.execute(select(Decision.margin)).scalars().all()
    assert n_scores == 4 * 5  # every default scorer, once per scored edit
    assert all(m is not None and m >= 0 for m in margins)
    decided = _decisions(db)
    assert decided == {
        ids["relit"]: ("accepted", []),
        ids["unchanged"]: ("rejected", ["no_change"]),
        ids["other"]: ("rejected", ["identity_lost"]),
        ids["noise"]: ("rejected", ["no_face"]),
    }

    # thresholds change -> --redecide, in a fresh process that must import no model library
    env = {**os.environ, "SYNTHPIPE_SCORE__TRYON__IDENTITY_MAX": "0.05", "SYNTHPIPE_SCORE__TRYON__CLIP_IMAGE_MIN": "0.99"}
    probe = subprocess.run([sys.executable, "-c", REDECIDE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    lines = probe.stdout.strip().splitlines()
    report, loaded = json.loads(lines[0]), json.loads(lines[-1])
    assert loaded == {"code": 0, "heavy": []}
    assert report["decided"] == 4 and report["changed"] == 1 and report["accepted"] == 0
    after = _decisions(db)
    assert after[ids["relit"]] == ("rejected", ["clip_image_low", "identity_lost"])
    assert after[ids["unchanged"]] == ("rejected", ["no_change"])  # clip_image 1.0 passes 0.99
    with db.session() as s:
        relit = s.execute(select(Decision).where(Decision.edit_id == ids["relit"])).scalar_one()
        assert relit.failed["identity_lost"]["threshold"] == 0.05
        assert 0.05 < relit.failed["identity_lost"]["value"] < 0.6
        before = {(r.edit_id, r.scorer): (r.job_id, r.metrics) for r in s.execute(select(Score)).scalars()}

    # --rescore of one scorer: only its rows are recomputed; the others' are kept
    queued = _cli_json(capsys, "score", "--rescore", "--scorers", "change")
    assert queued == {"queued": 5, "edits": 5, "scorers": ["change"]}
    ran = _cli_json(capsys, "run", "--stage", "score")
    assert ran["score"]["succeeded"] == 4 and ran["score"]["failed"] == 1
    with db.session() as s:
        now = {(r.edit_id, r.scorer): (r.job_id, r.metrics) for r in s.execute(select(Score)).scalars()}
    assert now.keys() == before.keys()
    for key, (job_id, metrics) in now.items():
        if key[1] == "change":
            assert job_id != before[key][0] and metrics == before[key][1]  # recomputed, same photos
        else:
            assert (job_id, metrics) == before[key]
    assert _decisions(db) == decided  # decided again with the default thresholds of this process
    assert main(["score", "--rescore", "--scorers", "change,nope"]) == 2


def test_edit_chains_into_score_through_workers_and_a_killed_score_worker_loses_nothing(
        cluster: Cluster, tiny_models: dict[str, Path]) -> None:  # noqa: F811  (the imported fixture)
    cluster.env.update({"SYNTHPIPE_SCORE__SCORERS": "change,identity,clip,dino",
                        "SYNTHPIPE_SCORE__CLIP_MODEL": str(tiny_models["clip"]),
                        "SYNTHPIPE_SCORE__DINO_MODEL": str(tiny_models["dino"]),
                        "SYNTHPIPE_SCORE__DEVICE": "cpu", **FAST_FACES})
    ingest_photos(cluster, persons=2, garments=2)
    cluster.cli("pair", "--recipe", "tryon", "--limit", "4", "--seed", "3")
    cluster.worker("vl")
    cluster.worker("edit")
    vl = cluster.wait_done("vl", 4)
    n_edits = vl.get("succeeded", 0)
    assert n_edits > 0, vl
    cluster.wait_done("edit", n_edits)
    assert cluster.counts("score").get("queued", 0) == n_edits  # one score job per edit, none run yet
    doomed = cluster.worker("score")
    wait_for(lambda: cluster.counts("score").get("running", 0) > 0, 90, "a score job to start")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert cluster.counts("score").get("running", 0) > 0, "the worker was killed holding no job"
    cluster.worker("score")
    done = cluster.wait_done("score", n_edits)
    reasons = cluster.scalar(select(func.string_agg(Job.reason, ",")).where(Job.stage == "score"))
    assert done.get("succeeded") == n_edits, (done, reasons, cluster.logs())
    assert cluster.scalar(select(func.count()).select_from(Score)) == 4 * n_edits  # each scorer once per edit
    assert cluster.scalar(select(func.count()).select_from(Decision)) == n_edits
    assert cluster.scalar(select(func.max(Job.attempts)).where(Job.stage == "score")) == 2  # the killed batch
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert status["jobs"]["score"]["succeeded"] == n_edits


def test_a_judge_verdict_that_does_not_parse_is_a_recorded_judge_failure(
        db, score_env: dict[str, str], tiny_vl: Path, pics: dict[str, Image.Image],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from common.core.settings import reset_settings
    from common.devkit.tinymodels import tiny_run_settings

    for key, value in {**tiny_run_settings(), "SYNTHPIPE_VL_MODEL": str(tiny_vl), "SYNTHPIPE_VL__DEVICE": "cpu",
                       "SYNTHPIPE_VL__MAX_NEW_TOKENS": "6",  # a verdict cut short: it cannot parse
                       "SYNTHPIPE_SCORE__SCORERS": "change,judge"}.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    ids = _add_edits(pics, ["relit"])
    ran = _cli_json(capsys, "run", "--stage", "score")
    assert ran["score"]["succeeded"] == 1, ran
    assert _decisions(db) == {ids["relit"]: ("rejected", ["judge_failed"])}  # never a guessed score
    with db.session() as s:
        judge = s.execute(select(Score).where(Score.scorer == "judge")).scalar_one()
        assert judge.error_code == "judge.unparseable" and judge.metrics == {} and judge.raw_text
        assert judge.params["model"] == str(tiny_vl) and judge.params["max_new_tokens"] == 6
        decision = s.execute(select(Decision)).scalar_one()
        assert decision.failed["judge_failed"] == {"scorers": {"judge": "judge.unparseable"}}
