"""Reading the broker's queues for the store's metrics (``synthpipe metrics``)."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from common.core import stages
from common.queue.app import get_app

if TYPE_CHECKING:
    from common.core.settings import Settings


class BrokerQueues:
    """Messages waiting in each registered stage's queue (Redis: LLEN over its priority lists),
    over one connection made on first use and dropped by :meth:`close` after an error."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._broker: Any = None
        self._lock = threading.Lock()

    def lengths(self) -> dict[str, int]:
        with self._lock:
            if self._broker is None:
                self._broker = get_app(self.settings).connection_for_read()
            channel = self._broker.default_channel
            client = channel.client
            out = {}
            for stage in stages.all_stages():  # a stage's lanes (edit.<backend>) count as its queue
                names = (stage.queue, *(stage.lane_queue(lane) for lane in stage.lanes))
                keys = {channel._q_for_pri(q, pri) for q in names for pri in channel.priority_steps}
                out[stage.queue] = int(sum(client.llen(k) for k in keys))
            return out

    def close(self) -> None:
        with self._lock:
            if self._broker is not None:
                with contextlib.suppress(Exception):  # already gone
                    self._broker.release()
                self._broker = None
