"""Types shared by every VL backend: the item in, the output back, the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from common.core.errors import ErrorKind, InputError, SynthpipeError, code_of, kind_of, rebuild

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


def check_images(item: VLItem, max_images: int, min_side: int) -> None:
    """Refuse an item whose images a backend cannot send: 1 to ``max_images`` PIL images, each
    side at least ``min_side`` px (an ``InputError`` naming the item and the image)."""
    n = len(item.images)
    if not 1 <= n <= max_images:
        raise InputError(f"item {item.key}: has {n} images; send 1 to {max_images}")
    for j, img in enumerate(item.images):
        if not hasattr(img, "size") or not hasattr(img, "convert"):
            raise InputError(f"item {item.key}: image {j} is not a PIL image")
        if min(img.size) < min_side:
            raise InputError(f"item {item.key}: image {j} is {img.size[0]}x{img.size[1]}; each side must "
                             f"be at least {min_side} px")


def usage_of(out: VLOutput, model: str) -> dict[str, Any]:
    """``{"usage": {model, prompt_tokens, completion_tokens}}`` of an answer (nothing when no tokens
    were spent), the model being the server's id when it was served, else ``model``: the job store
    adds it to the run's totals (``common.store.usage``)."""
    if not (out.prompt_tokens or out.completion_tokens):
        return {}
    return {"usage": {"model": out.served_model or model, "prompt_tokens": out.prompt_tokens,
                      "completion_tokens": out.completion_tokens}}


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
