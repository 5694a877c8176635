"""Text and JSON made storable in every database synthpipe runs on, in one place.

PostgreSQL refuses what SQLite and Python accept, and one refused value aborts the whole
transaction there: a NUL character in text (``text`` cannot hold it), NaN and infinities in JSON
(``json.dumps`` writes ``NaN``, which is not JSON), and lone surrogates (no UTF-8 encoding; SQLite
refuses those too). Whatever goes to the store from outside data passes through here first:

- :func:`storable_text` for text a row is *about* (an instruction): it is never changed behind
  the user's back; text that cannot be stored as it is raises :class:`UnstorableText` (code
  ``text.invalid``), so the row is refused with a reason and the rest go on.
- :func:`json_safe` for values kept for the record (provenance, a dataset's other columns): they
  are repaired rather than refused: NaN and ±inf become ``null``, NUL characters are dropped, lone
  surrogates become U+FFFD, tuples become lists. A value JSON cannot hold at all (bytes, objects)
  raises ``TypeError``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from common.core.errors import InputError

#: characters no database synthpipe supports stores as they are: NUL, and UTF-16 surrogates
#: (a Python str holds one only when it came from broken input, e.g. JSON's "\ud800")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableText(InputError):
    """Text with a character the store cannot hold (NUL, a lone surrogate)."""

    default_code = "text.invalid"


def storable_text(value: str, what: str) -> str:
    """``value`` unchanged when every store can hold it; else :class:`UnstorableText` naming
    ``what`` (a column, a field), the character and where it is."""
    bad = _UNSTORABLE.search(value)
    if bad is None:
        return value
    char = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate U+{ord(bad.group()):04X}"
    raise UnstorableText(f"{what}: {char} at position {bad.start()}, which a database cannot store; "
                         "remove it from the source data")


def repaired_text(value: str) -> str:
    """``value`` with NUL characters dropped and lone surrogates replaced by U+FFFD."""
    if _UNSTORABLE.search(value) is None:
        return value
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)


def json_safe(value: Any) -> Any:
    """``value`` as JSON every store accepts (see the module docstring); the input is not changed."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return repaired_text(value)
    if isinstance(value, dict):
        return {repaired_text(_key(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON")


def _key(key: Any) -> str:
    """A JSON object key: text, or a number, boolean or null written as ``json.dumps`` writes it."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    raise TypeError(f"a {type(key).__name__} key is not JSON")
