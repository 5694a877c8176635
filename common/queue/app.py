"""The Celery app of distributed mode: one queue per registered stage, on one broker.

Messages carry job ids only; the database holds the jobs, their inputs and outputs (by URI).
Tasks are acknowledged late and rejected when a worker is lost, so a killed worker's message
is delivered again; the job store's compare-and-set makes a duplicate harmless, and database
leases (not the broker's visibility timeout) bound how long a dead worker's jobs wait.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from common.core import stages
from common.core.errors import ConfigError
from common.core.security import broker_ssl_options
from common.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

EXCHANGE = Exchange("synthpipe", type="direct", durable=True)


def celery_config(settings: Settings) -> dict[str, Any]:
    c = settings.celery
    registered = stages.all_stages()
    return {
        "broker_url": settings.broker_url,
        # rediss://: certificates always checked, against celery.broker_ca_file when set; the
        # producers, workers (and their sweepers) and Flower all connect through this app
        "broker_use_ssl": broker_ssl_options(settings.broker_url or "", c.broker_ca_file),
        # every stage's queue, and one per lane of a stage that routes by lane (edit: per backend)
        "task_queues": [Queue(q, EXCHANGE, routing_key=q, durable=True)
                        for s in registered for q in (s.queue, *(s.lane_queue(lane) for lane in s.lanes))],
        "task_routes": {s.task_name: {"queue": s.queue, "exchange": EXCHANGE.name, "routing_key": s.queue}
                        for s in registered},
        "task_default_exchange": EXCHANGE.name,
        "task_default_exchange_type": "direct",
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # the database is the record of every job
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": c.soft_time_limit_s,
        "task_time_limit": c.time_limit_s,
        "broker_transport_options": {"visibility_timeout": c.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


@functools.cache
def _app_for(broker_url: str) -> Celery:
    app = Celery("synthpipe", set_as_current=True)
    app.conf.update(celery_config(get_settings()))
    app.set_default()
    return app


def get_app(settings: Settings | None = None) -> Celery:
    """The process's Celery app for the configured broker."""
    settings = settings or get_settings()
    if not settings.broker_url:
        raise ConfigError("distributed mode needs SYNTHPIPE_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    return _app_for(settings.broker_url)
