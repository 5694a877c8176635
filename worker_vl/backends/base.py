"""Types shared by every VL backend: the item in, the output back, the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from common.core.errors import ErrorKind, SynthpipeError, code_of, kind_of, rebuild

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class VLItem:
    """One request: images (RGB, through the safe loader) and a prompt."""

    key: str  # job idempotency key (for logs)
    images: list[Image.Image]
    system_prompt: str
    user_prompt: str  # text; images are placed before it in one user message
    json_schema: dict[str, Any] | None = None  # constrain decoding to this schema when set


@dataclass
class VLOutput:
    """The answer to one :class:`VLItem`; ``error`` is set instead of raising."""

    raw_text: str
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # this item's share of the batch wall time
    error_kind: ErrorKind | None = None  # what kind of failure ``error`` is
    error_code: str | None = None  # its stable reason code
    served_model: str = ""  # the model id a server answered with ("" in process)

    @classmethod
    def from_exception(cls, exc: BaseException, *, raw_text: str = "", seconds: float = 0.0,
                       **counts: Any) -> VLOutput:
        return cls(raw_text=raw_text, error=str(exc), error_kind=kind_of(exc), error_code=code_of(exc),
                   seconds=seconds, **counts)

    def exception(self) -> SynthpipeError | None:
        """The error this output carries, rebuilt as its type (None when it succeeded)."""
        if self.error is None:
            return None
        return rebuild(self.error_kind or ErrorKind.TRANSIENT, self.error, code=self.error_code, raw=self.raw_text)


@runtime_checkable
class Backend(Protocol):
    """What a VL stage needs from a model backend."""

    name: str

    def load(self) -> None:
        """Load weights once; calling again does nothing."""

    def run_batch(self, items: list[VLItem]) -> list[VLOutput]:
        """One output per item, in the same order; one bad item never fails the batch."""

    def unload(self) -> None:
        """Free the model (and GPU memory)."""
