"""The generate stage in distributed mode: real Redis, PostgreSQL and `synthpipe worker` processes."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.cluster import Cluster
from PIL import Image
from sqlalchemy import func, select

from common.store.rows import AssetLineage, Edit, Score


def test_generate_jobs_reach_a_worker_and_their_images_are_scored(cluster: Cluster,  # noqa: F811
                                                                  tiny_models: dict[str, Path]) -> None:
    from skimage import data

    cluster.env["SYNTHPIPE_GENERATE__MODEL"] = str(tiny_models["flux"])
    photo = cluster.tmp / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((128, 128)).save(photo)
    cluster.cli("ingest", str(photo), "--role", "character")
    queued = json.loads(cluster.cli("generate", "--character", str(photo), "--n", "3", "--seed", "2",
                                    "--json").stdout)
    assert queued["queued"] == 3
    cluster.worker("generate")
    cluster.worker("score")
    assert cluster.wait_done("generate", 3) == {"succeeded": 3}
    assert cluster.wait_done("score", 3) == {"succeeded": 3}
    assert cluster.scalar(select(func.count()).select_from(AssetLineage)) == 3
    assert cluster.scalar(select(func.count()).select_from(Edit).where(Edit.origin == "generated")) == 3
    assert cluster.scalar(select(func.count()).select_from(Score).where(Score.scorer == "identity")) == 3
