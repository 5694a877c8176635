"""Keeps a Chromium tab on its site: every request the tab makes (navigations, redirects, scripts,
XHR, frames) is paused by the DevTools ``Fetch`` domain before it leaves the browser, and only
requests to the site's own hosts go on; the rest fail as blocked by the client and are counted.

Selenium's ``execute_cdp_cmd`` sends commands but cannot receive DevTools events, so the guard
holds its own DevTools connection to the tab (the one chromedriver opened, on loopback) and
answers ``Fetch.requestPaused`` from a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websocket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockedRequest:
    url: str
    resource_type: str  # DevTools' type: "Document", "Script", "XHR", "Fetch", "Image", ...


class HostGuard:
    """Answers every paused request of one tab with ``allow(url)``. Thread-safe."""

    def __init__(self, debugger_address: str, target_id: str, timeout_s: float = 10.0) -> None:
        self._ws = websocket.create_connection(
            f"ws://{debugger_address}/devtools/page/{target_id}", suppress_origin=True, timeout=timeout_s
        )
        self._ws.settimeout(None)
        self._lock = threading.Lock()
        self._allow: Callable[[str], bool] = lambda url: False  # nothing leaves until a render says so
        self._blocked: list[BlockedRequest] = []
        self._next_id = 0
        self._send("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})
        self._thread = threading.Thread(target=self._run, name="host-guard", daemon=True)
        self._thread.start()

    def allow(self, rule: Callable[[str], bool]) -> None:
        """From now on, requests whose URL ``rule`` refuses are blocked."""
        with self._lock:
            self._allow = rule

    def take_blocked(self) -> list[BlockedRequest]:
        """The requests blocked since the last call."""
        with self._lock:
            out, self._blocked = self._blocked, []
        return out

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()
        self._thread.join(timeout=2)

    def _send(self, method: str, params: dict[str, Any]) -> None:
        with self._lock:
            self._next_id += 1
            message = json.dumps({"id": self._next_id, "method": method, "params": params})
        self._ws.send(message)

    def _run(self) -> None:
        while True:
            try:
                message = json.loads(self._ws.recv())
            except Exception:  # the browser went away or the guard was closed
                return
            if message.get("method") != "Fetch.requestPaused":
                continue
            params = message["params"]
            url = params["request"]["url"]
            with self._lock:
                allowed = self._allow(url)
                if not allowed:
                    self._blocked.append(BlockedRequest(url, str(params.get("resourceType", ""))))
            try:
                if allowed:
                    self._send("Fetch.continueRequest", {"requestId": params["requestId"]})
                else:
                    log.debug("blocked off-site request %s", url)
                    self._send("Fetch.failRequest", {"requestId": params["requestId"],
                                                     "errorReason": "BlockedByClient"})
            except Exception:
                return
