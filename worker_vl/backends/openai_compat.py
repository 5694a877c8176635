"""OpenAI-compatible VL backend: the model runs in a serving engine (vLLM, SGLang, a hosted API).

Each item is one chat-completions request: the images as PNG data URLs before the prompt in
one user message, the item's JSON schema as ``response_format`` (the server constrains decoding
to it; the stage validates every answer again on our side). Instead of batching, up to
``max_in_flight`` requests are in flight at once (a bounded thread pool shared by every caller
of this backend), so a CPU-only worker keeps a GPU server busy. The backend holds no device.

Faults, each a typed error with a reason code, per item (one bad item never fails the batch):

* 429 and 5xx: retried here up to ``max_retries`` times, after the server's ``Retry-After`` when
  it sends one, else an exponential backoff; then ``TransientError`` (``vl.server_busy`` /
  ``vl.server_error``): the job is retried later.
* no connection / a dropped one: ``TransientError`` ``vl.server_unreachable``; no answer in
  ``timeout_s``: ``TransientError`` ``vl.timeout``.
* another 4xx: ``InputError`` ``vl.request_refused`` for that item alone (401/403 and 404 are
  settings errors: ``vl.unauthorized``, ``vl.model_not_served``).
* at :meth:`load`, a server that does not answer is a ``ConfigError`` naming
  ``vl.openai.base_url``.

The API key (from the variable ``api_key_env`` names, or ``api_key_file``) is sent as a bearer
token and appears in no parameter, log line or error.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.core.errors import ConfigError, InputError, ModelOutputError, TransientError
from worker_vl.backends.base import VLItem, VLOutput, check_images

log = logging.getLogger(__name__)

SETTING = "vl.openai.{} (SYNTHPIPE_VL__OPENAI__{})"


def setting(name: str) -> str:
    """How a ``vl.openai`` key is named in errors: its dotted path and its variable."""
    return SETTING.format(name, name.upper())


class OpenAIVLBackend:
    """A client of an OpenAI-compatible chat-completions server (``vl.backend = openai``)."""

    name = "openai"
    remote = True  # holds no device: lives in the residency manager ``remote``

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_in_flight: int = 8,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_images: int = 4,
        min_image_side: int = 14,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigError(f"{setting('max_in_flight')} must be at least 1")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.api_key_file = Path(api_key_file) if api_key_file else None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_images = max_images
        self.min_image_side = min_image_side
        self.server_models: list[str] = []
        self._api_key: str | None = None
        self._session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"OpenAIVLBackend(model={self.model_id!r}, base_url={self.base_url!r})"

    def params(self) -> dict[str, Any]:
        """Settings that shape the outputs, for provenance (no key, no key file contents)."""
        keys = "model_id base_url max_new_tokens temperature top_p seed extra_body"
        return {"backend": self.name} | {k: getattr(self, k) for k in keys.split()}

    # ------------------------------------------------------------------ connection
    def load(self) -> None:
        """Read the key, open the connection pool and check the server serves ``model``."""
        if self._session is not None:
            return
        import requests
        from requests.adapters import HTTPAdapter

        self._api_key = self._read_key()
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.max_in_flight, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "synthpipe-vl"
        if self._api_key:
            session.headers["Authorization"] = f"Bearer {self._api_key}"
        self.server_models = self._served_models(session)
        if self.server_models and self.model_id not in self.server_models:
            raise ConfigError(
                f"{setting('model')}: the server at {self.base_url} does not serve {self.model_id!r}; it serves "
                f"{', '.join(self.server_models[:10])}", code="vl.model_not_served")
        self._pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="vl-request")
        self._session = session
        log.info("openai backend: %s at %s, up to %d requests in flight", self.model_id, self.base_url,
                 self.max_in_flight)

    def _read_key(self) -> str | None:
        if self.api_key_file is not None:
            try:
                return self.api_key_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise ConfigError(f"{setting('api_key_file')}: cannot read the key file ({exc.strerror})",
                                  code="vl.api_key_unreadable") from None
        return os.environ.get(self.api_key_env) or None

    def _served_models(self, session: Any) -> list[str]:
        """The model ids ``GET /models`` lists; an unreachable server is a settings error."""
        import requests

        url = f"{self.base_url}/models"
        try:
            resp = session.get(url, timeout=(self.connect_timeout_s, self.timeout_s))
        except requests.RequestException as exc:
            raise ConfigError(
                f"{setting('base_url')}: no OpenAI-compatible server answers at {self.base_url} "
                f"({type(exc).__name__}); start one (`synthpipe serve-args vl` prints the command) or fix the URL",
                code="vl.server_unreachable") from None
        if resp.status_code in (401, 403):
            raise ConfigError(f"the server at {self.base_url} refused the API key ({resp.status_code}): set "
                              f"{setting('api_key_env')} to a variable holding a valid key, or "
                              f"{setting('api_key_file')}", code="vl.unauthorized")
        if resp.status_code == 404:
            raise ConfigError(f"{setting('base_url')}: {url} is not found; the URL should end in /v1",
                              code="vl.server_unreachable")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientError(f"the server at {self.base_url} is not ready ({resp.status_code})",
                                 code="vl.server_busy")
        try:
            return [str(m["id"]) for m in resp.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return []  # a server without a usable model list: the first request will tell

    def unload(self) -> None:
        """Close the connections (there are no weights to free)."""
        pool, session = self._pool, self._session
        self._pool = self._session = None
        if pool is not None:
            pool.shutdown(wait=True)
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ inference
    def run_batch(self, items: list[VLItem]) -> list[VLOutput]:
        """Answer every item, up to ``max_in_flight`` at once; failures land in that item's ``error``."""
        self.load()
        assert self._pool is not None
        futures = [self._pool.submit(self._answer, item) for item in items]
        return [f.result() for f in futures]

    def _answer(self, item: VLItem) -> VLOutput:
        started = time.perf_counter()
        try:
            body = self.request_body(item)
            reply = self._post(item.key, body)
            return self._output(reply, time.perf_counter() - started)
        except Exception as exc:  # one bad item must not fail the batch
            log.warning("item %s failed: %s", item.key, exc)
            raw = exc.raw if isinstance(exc, ModelOutputError) else ""
            return VLOutput.from_exception(exc, raw_text=raw, seconds=time.perf_counter() - started)

    def request_body(self, item: VLItem) -> dict[str, Any]:
        """The chat-completions request of one item (images as data URLs, schema as response_format)."""
        check_images(item, self.max_images, self.min_image_side)
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(img)}}
                                         for img in item.images]
        content.append({"type": "text", "text": item.user_prompt})
        messages: list[dict[str, Any]] = []
        if item.system_prompt:
            messages.append({"role": "system", "content": item.system_prompt})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "max_tokens": self.max_new_tokens,
                                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        if item.json_schema is not None:
            body["response_format"] = response_format(item.json_schema)
        return {**body, **self.extra_body}

    def _post(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request; 429/5xx retried after Retry-After or a backoff; the reply's JSON."""
        import requests

        url = f"{self.base_url}/chat/completions"
        session = self._session
        for attempt in range(self.max_retries + 1):
            try:
                resp = session.post(url, json=body, timeout=(self.connect_timeout_s, self.timeout_s))
            except requests.ConnectTimeout:
                raise TransientError(f"item {key}: no connection to {self.base_url} within "
                                     f"{self.connect_timeout_s:g} s", code="vl.server_unreachable") from None
            except requests.ReadTimeout:
                raise TransientError(f"item {key}: no answer from {self.base_url} within {self.timeout_s:g} s",
                                     code="vl.timeout") from None
            except requests.RequestException as exc:  # refused, reset, dropped mid-answer
                raise TransientError(f"item {key}: connection to {self.base_url} failed ({type(exc).__name__})",
                                     code="vl.server_unreachable") from None
            status = resp.status_code
            if status == 429 or status >= 500:
                code = "vl.server_busy" if status == 429 else "vl.server_error"
                if attempt >= self.max_retries:
                    raise TransientError(f"item {key}: the server answered {status} {self.max_retries + 1} times: "
                                         f"{_message(resp)}", code=code)
                delay = self._delay(resp, attempt)
                log.info("item %s: server answered %d; retrying in %.2f s", key, status, delay)
                time.sleep(delay)
                continue
            if status in (401, 403):
                raise ConfigError(f"the server refused the API key ({status}): set {setting('api_key_env')} or "
                                  f"{setting('api_key_file')}", code="vl.unauthorized")
            if status == 404:
                raise ConfigError(f"{setting('model')}: the server answered 404 for {self.model_id!r}: "
                                  f"{_message(resp)}", code="vl.model_not_served")
            if status >= 400:
                raise InputError(f"item {key}: the server refused the request ({status}): {_message(resp)}",
                                 code="vl.request_refused")
            try:
                reply: dict[str, Any] = resp.json()
            except ValueError:
                raise TransientError(f"item {key}: the server's reply is not JSON", code="vl.server_error") from None
            return reply
        raise AssertionError("unreachable")

    def _delay(self, resp: Any, attempt: int) -> float:
        """The server's ``Retry-After`` (seconds or an HTTP date), else base * 2**attempt; capped."""
        after = retry_after(resp.headers.get("Retry-After"))
        delay = after if after is not None else self.backoff_base_s * 2 ** attempt
        return max(0.0, min(delay, self.backoff_max_s))

    def _output(self, reply: dict[str, Any], seconds: float) -> VLOutput:
        from worker_vl.constrained import check_json_output

        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelOutputError("the server's reply has no choices[0].message", raw=str(reply)[:2000],
                                   code="vl.bad_reply") from None
        usage = reply.get("usage") or {}
        out = VLOutput(raw_text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                       completion_tokens=int(usage.get("completion_tokens") or 0), seconds=seconds,
                       served_model=str(reply.get("model") or self.model_id))
        if choice.get("finish_reason") == "length" and (exc := check_json_output(text)) is not None:
            out.error, out.error_kind, out.error_code = str(exc), exc.kind, exc.code
        return out


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """``response_format`` of a JSON schema: the same bounded form the in-process grammar compiles
    (:func:`worker_vl.constrained.bound_schema`), so both paths constrain alike."""
    from worker_vl.constrained import bound_schema

    name = str(schema.get("title") or "answer").replace(" ", "_")[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": bound_schema(schema), "strict": True}}


def data_url(image: Any) -> str:
    """A PIL image as a lossless PNG data URL (the server sees the pixels the loader gave us)."""
    buf = io.BytesIO()
    (image if image.mode in ("RGB", "L") else image.convert("RGB")).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(resp: Any) -> str:
    """The error message of a reply, short (OpenAI-style ``{"error": {"message": ...}}`` or the text)."""
    try:
        err = resp.json().get("error")
        text = err.get("message") if isinstance(err, dict) else str(err or resp.text)
    except (ValueError, AttributeError):
        text = resp.text
    return " ".join(str(text).split())[:300]

