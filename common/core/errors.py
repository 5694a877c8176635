"""Error types. Each kind of failure is a type with a stable reason *code*, so callers never
match on strings: a code (``image.too_small``, ``robots.disallowed``, ``vl.schema_invalid``) can be
counted, filtered and thresholded; the message is for people.

Across a process or backend boundary an error travels as an :class:`ErrorKind` plus its code
and message (:func:`describe` / :func:`rebuild`), never as a class name to parse back.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(enum.StrEnum):
    """What kind of failure an error is, which decides what happens to its job."""

    INPUT = "input"  # bad input: final, no retry
    MODEL_OUTPUT = "model_output"  # output that does not parse or validate: final, raw kept
    TRANSIENT = "transient"  # may pass: retried with backoff
    CONFIG = "config"  # the runner is misconfigured: jobs go back to the queue uncharged


class SynthpipeError(Exception):
    """Base class of every error synthpipe raises on purpose. ``code`` is the stable reason."""

    kind: ErrorKind = ErrorKind.TRANSIENT
    default_code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code


class InputError(SynthpipeError):
    """Bad input: retrying cannot help. The message names the item and the fix."""

    kind = ErrorKind.INPUT
    default_code = "input.invalid"


class TransientError(SynthpipeError):
    """A failure that may pass (network, busy database, lost worker): retried with backoff."""

    kind = ErrorKind.TRANSIENT
    default_code = "transient"


class ModelOutputError(SynthpipeError):
    """Model output that does not parse or validate; ``raw`` keeps what the model said."""

    kind = ErrorKind.MODEL_OUTPUT
    default_code = "model.output_invalid"

    def __init__(self, message: str, raw: str = "", *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.raw = raw


class ConfigError(SynthpipeError):
    """Invalid settings; the message names the key and what is allowed."""

    kind = ErrorKind.CONFIG
    default_code = "config.invalid"


class ImageRejected(InputError):
    """The safe image loader refused an image; ``reason`` is short and specific."""

    default_code = "image.rejected"

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason, code=code)
        self.reason = reason


_BY_KIND: dict[ErrorKind, type[SynthpipeError]] = {
    ErrorKind.INPUT: InputError,
    ErrorKind.MODEL_OUTPUT: ModelOutputError,
    ErrorKind.TRANSIENT: TransientError,
    ErrorKind.CONFIG: ConfigError,
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of any exception: synthpipe's own carry it; anything else may pass."""
    return exc.kind if isinstance(exc, SynthpipeError) else ErrorKind.TRANSIENT


def code_of(exc: BaseException) -> str:
    """The stable reason code of any exception (``unexpected.<ClassName>`` for foreign ones)."""
    return exc.code if isinstance(exc, SynthpipeError) else f"unexpected.{type(exc).__name__}"


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data that can cross a boundary (a backend output, a JSON row)."""
    out: dict[str, Any] = {"kind": kind_of(exc).value, "code": code_of(exc), "message": str(exc)}
    if isinstance(exc, ModelOutputError):
        out["raw"] = exc.raw
    return out


def rebuild(kind: ErrorKind | str, message: str, *, code: str | None = None, raw: str = "") -> SynthpipeError:
    """The error of ``kind`` with ``message`` and ``code``: the inverse of :func:`describe`."""
    cls = _BY_KIND[ErrorKind(kind)]
    if cls is ModelOutputError:
        return ModelOutputError(message, raw=raw, code=code)
    return cls(message, code=code)


# Network failures by class name (requests, urllib3, httpx, huggingface_hub raise their own
# types, none of them imported here); builtin ConnectionError and TimeoutError by type.
_NETWORK_ERRORS = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "NewConnectionError",
                   "MaxRetryError", "ProtocolError", "ConnectError", "ReadError", "RemoteProtocolError",
                   "TimeoutException", "ChunkedEncodingError"}


def model_load_error(model: str, exc: BaseException, setting: str = "the model setting") -> ConfigError:
    """The error to raise when ``model`` failed to load because of ``exc``: always a settings
    error naming ``setting`` (a path that is no checkpoint, a hub id that is unreachable and not
    cached). Retrying cannot find a model that is not there; the runner gives the jobs back."""
    seen: BaseException | None = exc
    network = False
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError) or type(seen).__name__ in _NETWORK_ERRORS:
            network = True
        seen = seen.__cause__ or seen.__context__
    why = "the hub is unreachable and it is not cached" if network else str(exc).splitlines()[0][:300]
    return ConfigError(f"model {model!r} could not be loaded ({why}): set {setting} to a hub id or a local "
                       "checkpoint; `synthpipe models tiny DIR` writes small offline ones",
                       code="model.not_found")


def error_type(exc: BaseException) -> str:
    """The name recorded in a job's ``error_type`` column for ``exc``."""
    return type(exc).__name__
