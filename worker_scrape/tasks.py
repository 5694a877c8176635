"""Celery entry points of the scrape stage (thin: the work is in ``worker_scrape.service``)."""

from common.queue.tasks import stage_task

crawl = stage_task("scrape", "scrape.crawl")
