"""A toy stage with phases (``SYNTHPIPE_PLUGINS=toy_phased``): each phase sleeps a little and
stamps the wall clock, so a test can see batch k+1 prepared while batch k is on the "model"."""

from __future__ import annotations

import os
import time
from typing import Any

from common.core import stages
from common.runtime.overlap import Phases
from common.store.jobs import ClaimedJob, Outcome

PREPARE_S = 0.25
RUN_S = 0.4


def _stamp(seconds: float) -> list[float]:
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


def prepare(jobs: list[ClaimedJob], ctx: Any) -> dict[str, Any]:
    return {"jobs": jobs, "prepared": _stamp(PREPARE_S)}


def run(state: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {**state, "ran": _stamp(RUN_S)}


def finish(state: dict[str, Any], ctx: Any) -> list[Outcome]:
    return [Outcome.ok({"n": int(j.payload["n"]), "pid": os.getpid(), "prepared": state["prepared"],
                        "ran": state["ran"]}) for j in state["jobs"]]


PHASES = Phases(prepare, run, finish)
process_batch = PHASES.whole

stages.register(stages.Stage("toyp", "toy_phased:process_batch", "toyp.stamp", order=98,
                             help="stamps its phases", phases="toy_phased:PHASES"))
