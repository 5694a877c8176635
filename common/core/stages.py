"""The stage registry: the one place that knows which stages exist.

A stage is a worker package plus one :class:`Stage` entry here. The job store, the local
runner, the Celery app (queues, routes, task names), the CLI's choices, ``status`` and the
sweeper all read this registry, so adding a stage touches nothing else in ``common/``.

Entries name their implementation as ``"module:attribute"`` strings; nothing is imported until
a stage runs, so ``common`` never depends on its plugins at import time. Extra stages (a user's
own, or a test's) come from modules named in the ``plugins`` setting (``SYNTHPIPE_PLUGINS``),
each of which calls :func:`register` when imported.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.core.backends import EDIT_BACKENDS
from common.core.errors import ConfigError

if TYPE_CHECKING:
    from common.core.settings import Settings


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    #: ``"module:function"`` of ``process_batch(jobs, ctx) -> list[Outcome]``
    batch: str
    #: Celery task name, ``stage.verb``
    task_name: str
    #: where the Celery task is defined (``None``: the generic task from ``common.queue.tasks``)
    tasks_module: str | None = None
    #: dotted path of the batch-size setting (``"vl.batch_size"``); ``None``: one job per batch
    batch_size_setting: str | None = None
    #: holds a model on a device (one residency manager per device decides what stays loaded)
    holds_model: bool = False
    #: position in ``run --stage all`` (lower runs first)
    order: int = 100
    #: Celery pool of a worker with ``--concurrency > 1``: ``threads`` when the work must share
    #: process state (the crawler's per-host politeness), else ``prefork``
    pool: str = "prefork"
    help: str = ""
    #: ``"module:attribute"`` of a ``common.runtime.overlap.Phases`` (prepare/run/finish) for overlapped batches
    phases: str | None = None
    #: a payload field that splits the stage's queue into lanes (the edit stage's ``backend``): a job
    #: naming a lane goes to the queue ``<stage>.<lane>``, so workers may serve some lanes only
    lane_field: str | None = None
    #: every lane there is (each gets its queue)
    lanes: tuple[str, ...] = ()
    #: dotted path of the setting naming the lanes this process serves (empty: all of them)
    lanes_setting: str | None = None

    @property
    def queue(self) -> str:
        return self.name

    def lane_queue(self, lane: str) -> str:
        """The queue of ``lane``'s jobs."""
        return f"{self.name}.{lane}"

    def served_lanes(self, settings: Settings) -> tuple[str, ...]:
        """The lanes a process with ``settings`` serves; empty: every job of the stage."""
        if self.lanes_setting is None:
            return ()
        return tuple(operator.attrgetter(self.lanes_setting)(settings))

    def queues(self, settings: Settings) -> list[str]:
        """The queues a worker of this stage consumes: its lanes' only when it serves some, else
        the stage's own queue and every lane's."""
        served = self.served_lanes(settings)
        if served:
            return [self.lane_queue(lane) for lane in served]
        return [self.queue, *(self.lane_queue(lane) for lane in self.lanes)]

    def batch_function(self) -> Callable[..., Any]:
        return _resolve(self.batch)

    def phases_object(self) -> Any:
        """The stage's :class:`common.runtime.overlap.Phases`, or None when it has none."""
        return _resolve(self.phases) if self.phases else None

    def batch_size(self, settings: Settings) -> int:
        if self.batch_size_setting is None:
            return 1
        return int(operator.attrgetter(self.batch_size_setting)(settings))


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add ``stage`` (or replace the entry of the same name: re-importing a plugin is harmless)."""
    if not stage.name.isidentifier():
        raise ValueError(f"stage name {stage.name!r} must be an identifier")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage (tests that define a toy stage clean up with this)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered stage, in pipeline order."""
    return tuple(s.name for s in sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name)))


def all_stages() -> tuple[Stage, ...]:
    return tuple(_REGISTRY[n] for n in names())


def get(name: str) -> Stage:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; allowed: {', '.join(names())}") from None


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import each plugin module (each registers its stages); a missing one is a settings error."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"plugins (SYNTHPIPE_PLUGINS): cannot import {module!r}: {exc}") from None


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# --- the built-in stages -------------------------------------------------------------------

register(Stage("scrape", "worker_scrape.service:process_batch", "scrape.crawl", "worker_scrape.tasks",
               batch_size_setting="scrape.concurrency", order=10, pool="threads",
               help="crawl batches in headless Chromium, scrape.concurrency sites at once"))
register(Stage("vl", "worker_vl.service:process_batch", "vl.analyze", "worker_vl.tasks",
               batch_size_setting="vl.batch_size", holds_model=True, order=20,
               help="vision-language analyses of item sets", phases="worker_vl.service:PHASES"))
register(Stage("edit", "worker_edit.service:process_batch", "edit.apply", "worker_edit.tasks",
               batch_size_setting="edit.batch_size", holds_model=True, order=30,
               help="diffusion edits of analysed item sets", phases="worker_edit.service:PHASES",
               lane_field="backend", lanes=tuple(EDIT_BACKENDS), lanes_setting="edit.serve_backends"))
register(Stage("score", "worker_score.service:process_batch", "score.evaluate", "worker_score.tasks",
               batch_size_setting="score.batch_size", holds_model=True, order=40,
               help="scores and accept/reject decisions of edits"))
register(Stage("train", "worker_train.service:process_batch", "train.fit", "worker_train.tasks",
               holds_model=True, order=60, help="LoRA fine-tuning of the edit and VL models on snapshots"))
register(Stage("generate", "worker_generate.service:process_batch", "generate.render", "worker_generate.tasks",
               batch_size_setting="generate.batch_size", holds_model=True, order=35,
               help="text-to-image FLUX renders of a character (with its LoRA) as new character assets",
               phases="worker_generate.service:PHASES"))
