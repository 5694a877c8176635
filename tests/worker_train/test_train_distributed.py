"""A train job through a real Celery worker (its own Redis, the real PostgreSQL, tiny models)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.cluster import Cluster, ingest_photos
from fixtures.net import wait_for
from fixtures.redis import RedisServer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.store.rows import Adapter, Decision, Edit

pytestmark = [pytest.mark.postgres, pytest.mark.redis]




@pytest.fixture
def train_cluster(pg_url: str, redis_server: RedisServer, tiny_models: dict[str, Path],
                  tmp_path: Path) -> Iterator[Cluster]:
    from common.devkit.tinymodels import tiny_run_settings
    from common.store.db import Database

    Database(pg_url).upgrade()
    env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith("SYNTHPIPE_")},
           "SYNTHPIPE_DATA_DIR": str(tmp_path / "data"), "SYNTHPIPE_DATABASE_URL": pg_url,
           "SYNTHPIPE_STORAGE_URL": (tmp_path / "objects").as_uri(), "SYNTHPIPE_BROKER_URL": redis_server.url,
           "SYNTHPIPE_VL_MODEL": str(tiny_models["vl"]), "SYNTHPIPE_EDIT_MODEL": str(tiny_models["edit"]),
           "SYNTHPIPE_JOBS__LEASE_S": "30", "SYNTHPIPE_CELERY__SWEEP_INTERVAL_S": "1",
           "SYNTHPIPE_CELERY__RESEND_AFTER_S": "3", **tiny_run_settings(),
           "OMP_NUM_THREADS": "1"}  # one torch thread per worker process, as in test_distributed's cluster
    c = Cluster(env, pg_url, tmp_path)
    yield c
    c.stop_all()


def test_train_job_through_a_celery_worker(train_cluster: Cluster) -> None:
    c = train_cluster
    ingest_photos(c, persons=2, garments=2)
    c.cli("pair", "--recipe", "tryon", "--limit", "3", "--seed", "1")
    c.worker("vl")
    c.worker("edit")
    c.wait_done("vl", 3)
    wait_for(lambda: c.scalar(select(func.count()).select_from(Edit)) == 3, 150, "3 edits")
    with Session(c.engine) as s, s.begin():  # AI decisions, as the score stage writes them
        for eid in s.scalars(select(Edit.id)):
            s.add(Decision(edit_id=eid, decision="accepted", reasons=[]))
    out = c.cli("train", "edit", "--steps", "6", "--resolution", "64", "--rank", "2", "--json")
    queued = json.loads(out.stdout)
    assert queued["queued"] and queued["snapshot"]["edits"] == 3
    log = open(c.tmp / "worker-train.log", "wb")  # noqa: SIM115
    c.workers.append(subprocess.Popen([sys.executable, "-m", "common.cli", "worker", "train"], env=c.env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    c.wait_done("train", 1, timeout=180)
    assert c.counts("train") == {"succeeded": 1}, c.logs()
    with Session(c.engine) as s:
        adapter = s.scalars(select(Adapter)).one()
        assert adapter.job_id == queued["job_id"] and adapter.steps == 6 and len(adapter.loss_curve) == 6
        assert adapter.snapshot_sha256 == queued["snapshot"]["sha256"] and adapter.hyperparameters["rank"] == 2
    listed = json.loads(c.cli("adapters", "list", "--json").stdout)["adapters"]
    assert [a["id"] for a in listed] == [adapter.id]


def test_flywheel_with_workers(train_cluster: Cluster, tiny_models: dict[str, Path]) -> None:
    c = train_cluster
    c.env.update({"SYNTHPIPE_SCORE__SCORERS": "change,clip", "SYNTHPIPE_SCORE__CLIP_MODEL": str(tiny_models["clip"]),
                  "SYNTHPIPE_IMAGES__MIN_SIDE": "32", "SYNTHPIPE_SCORE__TRYON__CLIP_DIRECTION_MIN": "-1",
                  "SYNTHPIPE_SCORE__TRYON__CLIP_TEXT_MIN": "-1", "SYNTHPIPE_SCORE__TRYON__CLIP_IMAGE_MIN": "0.7"})
    ingest_photos(c, persons=3, garments=3)
    c.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "1")
    for stage in ("vl", "edit", "score"):
        c.worker(stage)
    log = open(c.tmp / "worker-train.log", "wb")  # noqa: SIM115
    c.workers.append(subprocess.Popen([sys.executable, "-m", "common.cli", "worker", "train"], env=c.env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    c.wait_done("vl", 6)
    c.wait_done("score", c.counts("vl").get("succeeded", 0))
    out = c.tmp / "fw"
    run = c.cli("flywheel", "--rounds", "1", "--eval-sets", "4", "--out", str(out), "--steps", "4",
                "--resolution", "64", "--timeout", "240", "--json")
    report = json.loads(run.stdout)
    assert [r["round"] for r in report["rounds"]] == [0, 1] and report["rounds"][1]["adapter"] is not None
    assert all(r["eval_edits"] == 4 for r in report["rounds"]), report
    assert c.counts("train") == {"succeeded": 1}
    assert (out / "report.html").is_file()
