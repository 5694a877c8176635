"""A toy stage defined through the registry alone (``SYNTHPIPE_PLUGINS=toy_stage``): no change
anywhere in ``common`` is needed for it to run in local mode and through a Celery worker."""

from __future__ import annotations

import os
from typing import Any

from common.core import stages
from common.core.errors import InputError
from common.store.jobs import ClaimedJob, Outcome


def process_batch(jobs: list[ClaimedJob], ctx: Any) -> list[Outcome]:
    """Squares each job's number; a negative number is bad input, a missing ``needs`` file a transient error."""
    out = []
    for job in jobs:
        n = int(job.payload["n"])
        needs = job.payload.get("needs")
        if needs and not os.path.exists(needs):  # a setting forgotten: not the job's fault, retried
            out.append(Outcome.from_error(RuntimeError(f"toy job {job.key}: {needs} is not there yet")))
            continue
        if n < 0:
            out.append(Outcome.from_error(InputError(f"toy job {job.key}: {n} is negative", code="toy.negative")))
        else:
            out.append(Outcome.ok({"square": n * n, "batch": len(jobs)}))
    return out


stages.register(stages.Stage("toy", "toy_stage:process_batch", "toy.square", batch_size_setting=None,
                             order=99, help="squares numbers"))
