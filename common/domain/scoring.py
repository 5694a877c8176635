"""Types every scorer shares: the pair in, the metrics out, the protocol.

Scorers live in worker packages (``worker_score.backends.*``, the judge in ``worker_vl``);
``common`` knows their names (``common.core.backends.SCORERS``) and these plain types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from common.core.errors import ErrorKind

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ScoreItem:
    """One pair to score: the input photo, the edited photo and what was asked for."""

    key: str
    input_image: Image.Image
    edited_image: Image.Image
    prompt: str | None = None  # None for a pair with no instruction (generated images)
    garments: list[Image.Image] = field(default_factory=list)
    recipe: str = "tryon"


@dataclass
class ScoreOutput:
    """Named metrics for one item, or an error (``error_kind`` + ``error_code`` + message).

    ``details`` holds non-numeric output worth keeping (a judge's reasons); ``raw`` the raw
    model text where there is one, kept also when it did not parse.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_kind: ErrorKind | None = None
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    raw: str | None = None
    seconds: float = 0.0

    @classmethod
    def failed(cls, message: str, *, kind: ErrorKind = ErrorKind.INPUT, code: str = "score.failed",
               raw: str | None = None, seconds: float = 0.0) -> ScoreOutput:
        return cls(error=message, error_kind=kind, error_code=code, raw=raw, seconds=seconds)


@runtime_checkable
class Scorer(Protocol):
    """What the score stage needs from a scorer backend."""

    name: str
    #: names of the metrics this scorer writes (a threshold may only name one of these)
    metrics: tuple[str, ...]

    def load(self) -> None: ...

    def run_batch(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        """One output per item, in order; one bad item never fails the batch."""

    def unload(self) -> None: ...

    def params(self) -> dict[str, Any]:
        """Model id and options, recorded with every score."""
