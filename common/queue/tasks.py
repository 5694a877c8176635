"""What every stage's Celery task shares: a thin wrapper around ``consumer.run_job``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from sqlalchemy.exc import DBAPIError, OperationalError

from common.core import stages
from common.queue.app import get_app
from common.queue.consumer import run_job

# A database that is briefly away is retried by Celery with backoff; everything else is
# recorded on the job by the runner itself.
RETRY = {"autoretry_for": (OperationalError, DBAPIError), "retry_backoff": True, "retry_backoff_max": 60,
         "max_retries": 8, "retry_jitter": True}


def stage_task(stage: str, name: str) -> Any:
    """Define the task ``name`` that runs one job of ``stage`` (its message carries the job id)."""

    @shared_task(name=name, ignore_result=True, **RETRY)
    def task(job_id: int) -> dict[str, Any]:
        return run_job(stage, int(job_id))

    return task


def task_for(stage_name: str) -> Any:
    """The Celery task of ``stage_name``: its worker's ``tasks`` module defines it, or, for a
    stage registered without one, the generic task is defined here."""
    stage = stages.get(stage_name)
    app = get_app()
    if stage.task_name not in app.tasks:
        stage_task(stage.name, stage.task_name)
    return app.tasks[stage.task_name]
