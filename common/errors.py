"""Error types. Each kind of failure is a type, so callers never match on strings."""

from __future__ import annotations


class SynthpipeError(Exception):
    """Base class of every error synthpipe raises on purpose."""


class InputError(SynthpipeError):
    """Bad input: retrying cannot help. The message names the item and the fix."""


class TransientError(SynthpipeError):
    """A failure that may pass (network, busy database, lost worker): retried with backoff."""


class ModelOutputError(SynthpipeError):
    """Model output that does not parse or validate; ``raw`` keeps what the model said."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class ConfigError(SynthpipeError):
    """Invalid settings; the message names the key and what is allowed."""


class ImageRejected(InputError):
    """The safe image loader refused an image; ``reason`` is short and specific."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Network failures by class name (requests, urllib3, httpx, huggingface_hub raise their own
# types, none of them imported here); builtin ConnectionError and TimeoutError by type.
_NETWORK_ERRORS = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "NewConnectionError",
                   "MaxRetryError", "ProtocolError", "ConnectError", "ReadError", "RemoteProtocolError",
                   "TimeoutException", "ChunkedEncodingError"}


def model_load_error(model: str, exc: BaseException) -> SynthpipeError:
    """The error to raise when ``model`` failed to load because of ``exc``: transient when a
    network failure is anywhere in its chain (a hub or mirror outage passes), else a settings
    error (a path that is no checkpoint, a model not in the offline cache)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError) or type(seen).__name__ in _NETWORK_ERRORS:
            return TransientError(f"model {model!r}: network failure while loading: {exc}")
        seen = seen.__cause__ or seen.__context__
    return ConfigError(f"model {model!r} could not be loaded: {exc}")


def error_type(exc: BaseException) -> str:
    """The name recorded in a job's ``error_type`` column for ``exc``."""
    return type(exc).__name__
