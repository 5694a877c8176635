"""Celery entry points of the VL stage (thin: the work is in ``worker_vl.service``)."""

from common.queue.tasks import stage_task

analyze = stage_task("vl", "vl.analyze")
