"""Reading a file a user named, safely: a regular file only, within a byte limit.

A FIFO blocks whoever opens it until a writer comes; a character device (``/dev/zero``,
``/dev/urandom``) never ends; a socket or a folder is no file to read. :func:`read_regular_file`
is the one way ``ingest`` and ``import`` read a user's file: it refuses those, and symlinks to
them, from ``stat`` alone, before anything is opened; then it opens without blocking, checks the
open file again (the path may have been swapped in between) and reads at most the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from common.core.errors import InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class FileRefused(InputError):
    """A file that is not read: not a regular file (``file.not_regular``) or too large
    (``image.too_large``, the loader's code for the same limit)."""

    default_code = "file.not_regular"


class UnreadableFile(FileRefused):
    """A file that could not be looked at or opened (missing, no permission)."""

    default_code = "file.unreadable"


def _refusal(st: os.stat_result, max_bytes: int) -> FileRefused | None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
        return FileRefused(f"not a regular file ({kind})")
    if st.st_size > max_bytes:
        return FileRefused(f"too large: {st.st_size} bytes (limit {max_bytes})", code="image.too_large")
    return None


def check_regular_file(path: Path, max_bytes: int) -> int:
    """The size of ``path`` when it is a regular file (a symlink to one counts) of at most
    ``max_bytes``; else :class:`FileRefused`. Nothing is opened."""
    try:
        st = path.stat()  # follows a symlink: what it points at is what would be read
    except OSError as exc:
        raise UnreadableFile(f"unreadable: {exc.strerror or exc}") from None
    refusal = _refusal(st, max_bytes)
    if refusal is not None:
        raise refusal
    return st.st_size


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` after :func:`check_regular_file`; never more than ``max_bytes``."""
    check_regular_file(path, max_bytes)
    try:
        # O_NONBLOCK: should a FIFO have been swapped in since the check, opening it does not wait
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(f"unreadable: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        refusal = _refusal(os.fstat(fh.fileno()), max_bytes)
        if refusal is not None:
            raise refusal
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise UnreadableFile(f"unreadable: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew after the check
        raise FileRefused(f"too large: more than {max_bytes} bytes (limit {max_bytes})", code="image.too_large")
    return data
