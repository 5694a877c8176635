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


def error_type(exc: BaseException) -> str:
    """The name recorded in a job's ``error_type`` column for ``exc``."""
    return type(exc).__name__
