"""Celery entry points of the edit stage (thin: the work is in ``worker_edit.service``)."""

from common.queue.tasks import stage_task

apply = stage_task("edit", "edit.apply")
