"""Celery entry points of the scrape stage (thin: the work is in ``worker_scrape.service``)."""

from common.tasks_base import stage_task

crawl = stage_task("scrape", "scrape.crawl")
