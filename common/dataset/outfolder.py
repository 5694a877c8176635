"""The folder an export writes into, and exactly what in it the export owns.

An export writes into a new or empty folder, or into one an earlier export wrote: its marker
file (``.synthpipe-export``) lists every file the export wrote and every folder it made, and
only those are ever removed or written over. A file is removed only when it is still the
regular file the marker names, a folder only when it is still a real folder and empty; nothing
is removed through a symlink, and no tree is removed whole. Anything else in the folder that
the next export would have to write over (a user's ``data/``, their ``summary.json``) is a
refusal naming it, decided before anything is touched (``export.path_not_ours``). A marker of an
older synthpipe, which named whole top-level entries, is not obeyed (``export.marker_outdated``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from common.core.errors import InputError

log = logging.getLogger(__name__)

MARKER = ".synthpipe-export"
MARKER_VERSION = 2


def _clean(rel: str) -> str | None:
    """``rel`` as a plain relative POSIX path inside the folder, or None when it is not one."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or str(path) == MARKER:
        return None
    return str(path)


def _folders_of(files: Iterable[str]) -> set[str]:
    """Every folder above the files, inside the export folder."""
    return {str(parent) for f in files for parent in PurePosixPath(f).parents if str(parent) != "."}


@dataclass(frozen=True)
class Previous:
    """What an earlier export's marker says it wrote."""

    files: frozenset[str]
    folders: frozenset[str]


@dataclass
class OwnedFolder:
    """An export folder claimed for ``files``: :meth:`finish` records what was written."""

    root: Path
    files: list[str]
    kept_folders: set[str]  # folders an earlier export made that still hold something not ours
    info: dict[str, Any]

    def finish(self) -> None:
        """Rewrite the marker with exactly the planned files and folders that now exist."""
        _write_marker(self.root, [f for f in self.files if (self.root / f).is_file()],
                      {d for d in _folders_of(self.files) | self.kept_folders if (self.root / d).is_dir()},
                      self.info)


def _write_marker(root: Path, files: list[str], folders: set[str], info: dict[str, Any]) -> None:
    record = {"version": MARKER_VERSION, **info, "files": sorted(set(files)), "folders": sorted(folders)}
    (root / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _real_dirs_above(root: Path, rel: str) -> bool:
    """Whether every folder between ``root`` and ``rel`` is a real folder (no symlink on the way)."""
    for parent in reversed(PurePosixPath(rel).parents):
        if str(parent) == ".":
            continue
        st = _lstat(root / parent)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _ours(root: Path, rel: str, previous: Previous) -> bool:
    """Whether ``rel`` is what the earlier export wrote there, still of the kind it wrote."""
    st = _lstat(root / rel)
    if st is None or not _real_dirs_above(root, rel):
        return False
    if rel in previous.files:
        return stat.S_ISREG(st.st_mode)
    return rel in previous.folders and stat.S_ISDIR(st.st_mode)


def read_marker(root: Path) -> Previous:
    """What ``root``'s marker lists; a folder without one, or with one this version cannot
    trust, is refused (nothing in it is touched)."""
    marker = root / MARKER
    st = _lstat(marker)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise InputError(f"{root} is not empty and was not written by synthpipe export (no {MARKER}); "
                         "give a new or empty folder", code="export.folder_not_ours")
    try:
        record = json.loads(marker.read_text())
    except (ValueError, OSError):
        record = None
    if not isinstance(record, dict):
        raise InputError(f"{marker} is not a synthpipe export marker; give a new or empty folder",
                         code="export.folder_not_ours")
    if record.get("version") != MARKER_VERSION:
        raise InputError(f"{marker} was written by an older synthpipe that did not list each file it wrote; "
                         f"remove that export (and {MARKER}) from {root}, or give a new folder",
                         code="export.marker_outdated")
    files = {c for c in map(_clean, record.get("files") or []) if c}
    folders = {c for c in map(_clean, record.get("folders") or []) if c}
    return Previous(frozenset(files), frozenset(folders))


def claim_folder(out_dir: Path, files: Iterable[str], **info: Any) -> OwnedFolder:
    """Make ``out_dir`` ready for an export that writes ``files`` (relative paths; their folders
    follow): check that nothing there it would write over is someone else's, then remove what
    the earlier export wrote, and record the plan in the marker (so an export cut short is still
    ours to replace). ``info`` goes into the marker. Refusals are ``InputError`` naming the path."""
    planned = []
    for f in files:
        clean = _clean(f)
        if clean is None:
            raise ValueError(f"not a path inside an export folder: {f!r}")
        planned.append(clean)
    st = _lstat(out_dir)
    if st is not None and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a folder", code="export.not_a_folder")
    previous = Previous(frozenset(), frozenset())
    if st is not None and any(out_dir.iterdir()):
        previous = read_marker(out_dir)
    conflicts = [rel for rel in sorted(_folders_of(planned)) + sorted(set(planned))
                 if _lstat(out_dir / rel) is not None and not _ours(out_dir, rel, previous)]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise InputError(f"{out_dir / conflicts[0]}{more} was not written by synthpipe export (it is not listed "
                         f"in {out_dir / MARKER}) and the export would write over it; move it away or give a "
                         "new folder", code="export.path_not_ours")
    kept = _remove_previous(out_dir, previous)
    out_dir.mkdir(parents=True, exist_ok=True)
    owned = OwnedFolder(out_dir, planned, kept, info)
    _write_marker(out_dir, planned, _folders_of(planned) | kept, info)
    return owned


def _remove_previous(root: Path, previous: Previous) -> set[str]:
    """Remove the earlier export's files and its folders that are then empty; returns the folders
    it made that stay because something else is in them (they are still its own)."""
    for rel in sorted(previous.files):
        if _ours(root, rel, previous):
            (root / rel).unlink()
    kept = set()
    for rel in sorted(previous.folders, key=lambda r: r.count("/"), reverse=True):  # deepest first
        if not _ours(root, rel, previous):
            continue
        if any((root / rel).iterdir()):
            log.info("keeping %s: it holds files an export did not write", root / rel)
            kept.add(rel)
        else:
            (root / rel).rmdir()
    return kept
