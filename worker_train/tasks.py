"""Celery entry points of the train stage (thin: the work is in ``worker_train.service``)."""

from common.queue.tasks import stage_task

fit = stage_task("train", "train.fit")
