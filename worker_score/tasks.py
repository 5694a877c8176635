"""Celery entry points of the score stage (thin: the work is in ``worker_score.service``)."""

from common.queue.tasks import stage_task

evaluate = stage_task("score", "score.evaluate")
