"""JSON-schema-constrained decoding with xgrammar, for ``transformers`` ``generate``.

How it fits together:

* :func:`bound_schema` rewrites a JSON schema into one xgrammar compiles safely: xgrammar
  0.2.x turns ``maxLength`` strings into a character class that lets raw control characters
  through (which is invalid JSON), so bounded strings become a ``pattern`` of printable
  characters instead.
* :class:`JsonGrammar` owns the tokenizer description and the grammar compiler of one
  model and caches compiled grammars by schema.
* :class:`BatchGrammarProcessor` is a ``LogitsProcessor`` for one ``generate`` call: one
  optional grammar per row (rows without a schema are left free), masks the logits of
  each row to the tokens its grammar allows.
* :func:`parse_json_output` turns the decoded text into JSON or raises
  :class:`~common.core.errors.ModelOutputError` (for example when ``max_new_tokens`` ran out
  before the grammar could close the JSON).

xgrammar, torch and transformers are imported inside functions.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from common.core.errors import ModelOutputError

logger = logging.getLogger(__name__)

#: Characters a bounded string may hold by default: printable ASCII but ``"`` and ``\``, so
#: the string never needs an escape, never breaks the JSON around it, and each character
#: costs at most one token (the output length stays bounded by the schema).
PRINTABLE_STRING_CLASS = r"[ !#-\[\]-~]"

#: the separators a constrained answer uses: compact, as vLLM's xgrammar backend with
#: ``disable_any_whitespace`` writes them
JSON_SEPARATORS = (",", ":")

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def bound_schema(
    schema: dict[str, Any],
    max_string_length: int | None = None,
    string_class: str = PRINTABLE_STRING_CLASS,
) -> dict[str, Any]:
    """Return a copy of ``schema`` whose bounded strings are printable-character patterns.

    A ``{"type": "string", "maxLength": n}`` (without ``pattern``, ``enum``, ``const`` or
    ``format``) becomes ``{"type": "string", "pattern": "^<string_class>{min,n}$"}``. With
    ``max_string_length`` set, strings without any bound get that bound too, which makes
    the total output length finite.
    """
    out = copy.deepcopy(schema)
    _bound_node(out, max_string_length, string_class)
    return out


#: xgrammar 0.2.8 fails to compile a regex repetition with a count above 128
#: ("Check failed: per_rule_fsm_hashes"), so longer bounds are split into chunks.
MAX_REGEX_REPEAT = 128


def repeat_pattern(cls: str, lo: int, hi: int) -> str:
    """A regex for ``lo..hi`` characters of ``cls``, with no repetition count over 128."""
    if not 0 <= lo <= hi:
        raise ValueError(f"bad string length bounds {lo}..{hi}")
    pieces: list[str] = []
    need, room = lo, hi
    while room > 0 or not pieces:
        take = min(MAX_REGEX_REPEAT, room)
        least = min(need, take)
        pieces.append(f"{cls}{{{least},{take}}}")
        need, room = need - least, room - take
    return "".join(pieces)


def _bound_node(node: Any, cap: int | None, cls: str) -> None:
    if not isinstance(node, dict):
        return
    types = node.get("type")
    is_string = types == "string" or (isinstance(types, list) and types == ["string"])
    free_form = not any(k in node for k in ("pattern", "enum", "const", "format"))
    if is_string and free_form:
        hi = node.get("maxLength", cap)
        if hi is not None:
            lo = int(node.pop("minLength", 0))
            node.pop("maxLength", None)
            hi = int(hi)
            node["pattern"] = f"^{repeat_pattern(cls, lo, hi)}$"
    for key in _SCHEMA_MAPS:
        sub = node.get(key)
        if isinstance(sub, dict):
            for child in sub.values():
                _bound_node(child, cap, cls)
    for key in _SCHEMA_LISTS:
        sub = node.get(key)
        if isinstance(sub, list):
            for child in sub:
                _bound_node(child, cap, cls)
    for key in _SCHEMA_ONES:
        _bound_node(node.get(key), cap, cls)


def schema_key(schema: dict[str, Any]) -> str:
    """A stable cache key for ``schema``."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class JsonGrammar:
    """Compiles JSON schemas into xgrammar grammars for one tokenizer and model.

    ``vocab_size`` must be the model's logits width (it may exceed ``len(tokenizer)``);
    ``stop_token_ids`` the ids ``generate`` stops on, so a finished JSON can only be
    followed by one of them.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: list[int],
        *,
        max_string_length: int | None = None,
        string_class: str = PRINTABLE_STRING_CLASS,
        max_threads: int = 2,
    ) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        self.max_string_length = max_string_length
        self.string_class = string_class
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=max_threads)
        self._cache: dict[str, Any] = {}

    def compile(self, schema: dict[str, Any]) -> Any:
        """Compile (or fetch from the cache) the grammar of ``schema``.

        Raises ``ValueError`` (or xgrammar's own error) for schemas it cannot compile.
        """
        key = schema_key(schema)
        compiled = self._cache.get(key)
        if compiled is None:
            try:
                bounded = bound_schema(schema, self.max_string_length, self.string_class)
                # No free whitespace (a weak model could loop on it forever) and compact
                # separators: about 10 % fewer tokens than ", " and ": ", and the grammar vLLM
                # compiles with disable_any_whitespace, so in-process and served answers agree.
                compiled = self._compiler.compile_json_schema(
                    json.dumps(bounded), any_whitespace=False, separators=JSON_SEPARATORS, strict_mode=True
                )
            except Exception as exc:  # xgrammar raises plain RuntimeErrors
                compiled = ValueError(f"schema does not compile: {str(exc).strip()[:300]}")
            self._cache[key] = compiled
        if isinstance(compiled, Exception):
            raise compiled
        return compiled

    def processor(self, grammars: list[Any | None]) -> Any:
        """A fresh logits processor for one ``generate`` call (one grammar or None per row)."""
        return new_processor(grammars, self.vocab_size)


def _logits_processor_base() -> type:
    from transformers import LogitsProcessor

    return LogitsProcessor


class BatchGrammarProcessor:
    """Masks each row's logits to its grammar; rows with ``None`` are not constrained.

    Use one instance per ``generate`` call, made by :func:`new_processor` (which adds
    ``transformers.LogitsProcessor`` as a base class without importing it here). A token a grammar
    refuses (which masking should make impossible) marks the row in :attr:`failed`
    instead of raising, so the other rows still finish.
    """

    def __init__(self, grammars: list[Any | None], vocab_size: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.grammars = grammars
        self.vocab_size = vocab_size
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.rows = [i for i, m in enumerate(self.matchers) if m is not None]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.failed: dict[int, str] = {}
        self._started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[0] != len(self.matchers):
            raise RuntimeError(
                f"grammar processor built for {len(self.matchers)} rows, got {input_ids.shape[0]}"
            )
        if self._started:
            last = input_ids[:, -1].tolist()
            for i in self.rows:
                m: Any = self.matchers[i]
                if i in self.failed or m.is_terminated():
                    continue
                if not m.accept_token(int(last[i])):
                    self.failed[i] = f"token {last[i]} refused by the grammar"
                    logger.warning("row %d: %s", i, self.failed[i])
        self._started = True
        active = []
        for i in self.rows:
            m = self.matchers[i]
            assert m is not None
            if i not in self.failed and not m.is_terminated():
                m.fill_next_token_bitmask(self.bitmask, i)
                active.append(i)
        if not active:
            return scores
        device = scores.device
        work = scores if device.type in ("cuda", "cpu") else scores.to("cpu")
        self._xgr.apply_token_bitmask_inplace(
            work,
            self.bitmask.to(work.device),
            vocab_size=min(self.vocab_size, work.shape[-1]),
            indices=active,
        )
        return work if work is scores else work.to(device)


_PROCESSOR_CLASS: type | None = None


def make_processor_class() -> type:
    """``BatchGrammarProcessor`` with ``transformers.LogitsProcessor`` as a base."""
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        base = _logits_processor_base()
        _PROCESSOR_CLASS = type(
            "HFBatchGrammarProcessor",
            (BatchGrammarProcessor, base),
            {"__doc__": BatchGrammarProcessor.__doc__},
        )
    return _PROCESSOR_CLASS


def new_processor(grammars: list[Any | None], vocab_size: int) -> Any:
    """A ``transformers`` logits processor constraining each row to its grammar (or not)."""
    return make_processor_class()(grammars, vocab_size)


def parse_json_output(text: str) -> Any:
    """Parse a constrained generation; raise :class:`ModelOutputError` when it is incomplete."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelOutputError(
            f"output is not complete JSON ({exc.msg} at char {exc.pos}); the generation "
            "probably reached max_new_tokens: raise max_new_tokens or bound the schema's "
            "strings, arrays and numbers",
            raw=text, code="vl.truncated",
        ) from exc


def check_json_output(text: str, failure: str | None = None) -> ModelOutputError | None:
    """The error of a constrained generation (``failure`` from the processor), or None."""
    if failure:
        return ModelOutputError(f"constrained decoding broke: {failure}", raw=text, code="vl.grammar_failed")
    try:
        parse_json_output(text)
    except ModelOutputError as exc:
        return exc
    return None
