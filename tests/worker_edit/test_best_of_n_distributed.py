"""Best-of-N in distributed mode with real parts: one `synthpipe worker edit --backends B` per
backend of the ensemble, each consuming only its backend's queue, a score worker, the real
PostgreSQL and a Redis of the test's own. The InstructPix2Pix worker is SIGKILLed holding
candidates of a set; its jobs come back and a fresh worker for that backend makes them: every
candidate is made once, by a worker serving its backend, and each set is selected once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fixtures.cluster import Cluster, ingest_photos
from fixtures.net import wait_for
from sqlalchemy import func, select

from common.store.rows import Edit, Job, Score, Selection

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ENSEMBLE = ("instruct-pix2pix", "qwen-image-edit-plus")


def _running_on(cluster: Cluster, pid: int) -> bool:
    with cluster.engine.connect() as c:
        workers = c.execute(select(Job.worker).where(Job.stage == "edit", Job.status == "running")).scalars().all()
    return any(w and w.endswith(f":{pid}") for w in workers)


def test_candidates_route_to_their_backends_workers_and_a_killed_worker_loses_and_doubles_nothing(
        cluster: Cluster, tiny_models: dict[str, Path]) -> None:
    cluster.env.update({"SYNTHPIPE_EDIT__PLUS_MODEL": str(tiny_models["edit-plus"]),
                        "SYNTHPIPE_EDIT__CANDIDATES": "3", "SYNTHPIPE_EDIT__ENSEMBLE": ",".join(ENSEMBLE),
                        "SYNTHPIPE_PAIRING__MAX_GARMENTS": "2", "SYNTHPIPE_SCORE__SCORERS": "change"})
    ingest_photos(cluster, persons=2, garments=2)
    doomed = cluster.worker("edit", "--backends", ENSEMBLE[0])
    plus = cluster.worker("edit", "--backends", ENSEMBLE[1])
    cluster.worker("score")
    cluster.cli("pair", "--recipe", "tryon", "--limit", "2", "--seed", "3")
    cluster.cli("run", "--stage", "vl")  # the producer: analyses, and 3 candidate jobs per set sent by backend
    n_sets = cluster.counts("vl").get("succeeded", 0)
    assert n_sets == 2, cluster.counts("vl")
    wait_for(lambda: _running_on(cluster, doomed.pid), 120, "the InstructPix2Pix worker to hold a candidate")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    assert cluster.counts("edit").get("running", 0) > 0, "the worker was killed holding no job"
    fresh = cluster.worker("edit", "--backends", ENSEMBLE[0])
    cluster.wait_done("edit", 3 * n_sets, timeout=180)
    cluster.wait_done("score", 3 * n_sets, timeout=120)

    with cluster.engine.connect() as c:
        jobs = c.execute(select(Job.key, Job.payload, Job.status, Job.attempts, Job.worker, Edit.id, Edit.backend,
                                Edit.candidate).outerjoin(Edit, Edit.job_id == Job.id)
                         .where(Job.stage == "edit")).all()
        assert len(jobs) == 3 * n_sets and all(j.status == "succeeded" for j in jobs), (jobs, cluster.logs())
        # each candidate made once, by a worker that serves its backend
        assert c.execute(select(func.count()).select_from(Edit)).scalar() == 3 * n_sets
        by_pid = {doomed.pid: ENSEMBLE[0], fresh.pid: ENSEMBLE[0], plus.pid: ENSEMBLE[1]}
        for j in jobs:
            assert j.backend == j.payload["backend"] == ENSEMBLE[j.candidate % 2]
            assert by_pid[int(j.worker.rsplit(":", 1)[1])] == j.backend, j
        again = [j for j in jobs if j.attempts == 2]  # the killed batch, made again by the fresh worker
        assert again and all(j.worker.endswith(f":{fresh.pid}") and j.backend == ENSEMBLE[0] for j in again)
        assert max(j.attempts for j in jobs) == 2
        assert c.execute(select(func.count(func.distinct(Score.edit_id)))).scalar() == 3 * n_sets
        selections = c.execute(select(Selection.analysis_id, Selection.candidates, Selection.expected,
                                      Selection.edit_id)).all()
    assert len(selections) == n_sets and all(s.candidates == s.expected == 3 for s in selections), selections
    assert {s.edit_id for s in selections} <= {j.id for j in jobs}
