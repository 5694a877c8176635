"""Progress bars on stderr for long work; quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr,
                    disable=not sys.stderr.isatty(), leave=False)


def bar(*, desc: str, total: int | None, unit: str = "job"):  # -> tqdm
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)
