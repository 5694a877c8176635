"""Celery entry points of the generate stage (thin: the work is in ``worker_generate.service``)."""

from common.queue.tasks import stage_task

render = stage_task("generate", "generate.render")
