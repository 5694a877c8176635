"""The VLM judge: a scorer that asks the Qwen-VL backend to rate an edit.

It reads the input photo, the edited photo, the instruction and any garment photos, and writes
a :class:`~common.domain.schemas.JudgeVerdict` under the JSON-schema grammar. A verdict that does not
parse is a recorded judge failure (``judge.unparseable``) with the raw text kept, never a
guessed score. When the judge's model and options are the VL stage's, both use the same
resident backend on the device (one copy of the weights).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import ValidationError

from common.core.errors import ErrorKind
from common.domain.schemas import JUDGE_SCHEMA_VERSION, JudgeVerdict
from common.domain.scoring import ScoreItem, ScoreOutput
from worker_vl.backends import resident_backend_for
from worker_vl.backends.base import VLItem, usage_of

log = logging.getLogger(__name__)

SYSTEM = (
    "You are a strict judge of image edits. You compare an input photo with its edited version and "
    "rate the edit on each criterion from 0 (worst) to 10 (best). Answer with JSON only."
)
USER = (
    "Image 1 is the input photo and image 2 is the edited photo{garments}. The edit instruction was: "
    "\"{prompt}\".\nRate: instruction_followed (did the edit do what was asked), over_editing (10 = nothing "
    "changed beyond the instruction), naturalness (does it look like a real photo), artifacts (10 = no "
    "visible artifacts), identity_kept (is it recognisably the same person), garment_match (do the clothes "
    "match the garment photos; 10 when no garment was asked for). Give up to three short reasons first."
)
METRICS = ("judge_instruction", "judge_over_editing", "judge_naturalness", "judge_artifacts", "judge_identity",
           "judge_garment", "judge_sc", "judge_pq", "judge_overall")


class VLJudgeScorer:
    """Scorer ``judge``: VIEScore-style ratings from a Qwen-VL model, in process or served
    (``backend`` ``openai``); ``options`` are that backend's (``common.core.backends.vl_backend_options``)."""

    name = "judge"
    metrics = METRICS

    def __init__(self, *, model: str, backend: str = "qwen", max_batch: int = 4, settings: Any = None,
                 **options: Any) -> None:
        self.backend_name = backend
        # greedy decoding, so a verdict is reproducible
        self.options = {"model": model, **options, "temperature": 0.0, "top_p": 1.0}
        self.max_batch = max_batch
        self.settings = settings
        self._backend: Any = None

    def params(self) -> dict[str, Any]:
        return {"backend": self.backend_name, **self.options, "schema_version": JUDGE_SCHEMA_VERSION}

    def load(self) -> None:
        """Take the resident VL backend with these options (the VL stage's, when they match)."""
        if self._backend is None:
            self._backend = resident_backend_for(self.backend_name, self.options, self.settings)

    def unload(self) -> None:
        self._backend = None  # the residency manager owns the weights (or the connections)

    def run_batch(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        self.load()
        schema = JudgeVerdict.model_json_schema()
        outputs: list[ScoreOutput] = []
        for start in range(0, len(items), self.max_batch):
            chunk = items[start:start + self.max_batch]
            requests = [self._request(item, schema) for item in chunk]
            started = time.perf_counter()
            answers = self._backend.run_batch(requests)
            share = (time.perf_counter() - started) / max(1, len(chunk))
            outputs += [_verdict(item, answer, share, self.options["model"])
                        for item, answer in zip(chunk, answers, strict=True)]
        return outputs

    @staticmethod
    def _request(item: ScoreItem, schema: dict[str, Any]) -> VLItem:
        garments = f", and images 3 to {2 + len(item.garments)} are the garment photos" if item.garments else ""
        prompt = item.prompt or "make a new photo of the same person"
        user = USER.format(garments=garments, prompt=prompt.replace('"', "'"))
        return VLItem(key=item.key, images=[item.input_image, item.edited_image, *item.garments],
                      system_prompt=SYSTEM, user_prompt=user, json_schema=schema)


def _verdict(item: ScoreItem, answer: Any, seconds: float, model: str) -> ScoreOutput:
    usage = usage_of(answer, model)
    error = answer.exception()
    if error is not None:
        kind = ErrorKind.TRANSIENT if error.kind == ErrorKind.TRANSIENT else error.kind
        code = "judge.unparseable" if error.kind == ErrorKind.MODEL_OUTPUT else error.code
        out = ScoreOutput.failed(f"judge: {error}", kind=kind, code=code, raw=answer.raw_text, seconds=seconds)
        out.details.update(usage)
        return out
    try:  # validated on our side whatever the backend (a server may ignore the schema)
        verdict = JudgeVerdict.model_validate(json.loads(answer.raw_text))
    except (json.JSONDecodeError, ValidationError) as exc:
        log.warning("judge verdict for %s does not parse: %s", item.key, exc)
        out = ScoreOutput.failed(f"judge verdict does not parse: {str(exc).splitlines()[0]}",
                                 kind=ErrorKind.MODEL_OUTPUT, code="judge.unparseable", raw=answer.raw_text,
                                 seconds=seconds)
        out.details.update(usage)
        return out
    return ScoreOutput(metrics=verdict.combined(), details={"verdict": verdict.model_dump(mode="json"), **usage},
                       raw=answer.raw_text, seconds=seconds)
