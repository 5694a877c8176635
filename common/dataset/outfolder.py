"""The folder an export writes into, and exactly what in it the export owns.

An export writes into a new or empty folder, or into one an earlier export wrote: its marker
file (``.synthpipe-export``) lists every file the export wrote and every folder it made, and
only those are ever removed or written over. A file is removed only when it is still the
regular file the marker names, a folder only when it is still a real folder and empty; nothing
is removed through a symlink, and no tree is removed whole. Anything else in the folder that
the next export would have to write over (a user's ``data/``, their ``summary.json``) is a
refusal naming it, decided before anything is touched (``export.path_not_ours``). A marker of an
older synthpipe, which named whole top-level entries, is not obeyed (``export.marker_outdated``).

A streaming export learns the names of most of its files (images, shards) only as it writes
them: it claims the folders they go in, and records each such file in a journal beside the
marker (``.synthpipe-export.journal``, one path a line, flushed) *before* creating it, so an
export killed mid-way still owns everything it wrote; :meth:`OwnedFolder.finish` folds the
journal into the marker. A name in a claimed folder that was there before and is not the
earlier export's is someone else's: the export refuses to write it (:meth:`OwnedFolder.foreign`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from common.core.errors import InputError

log = logging.getLogger(__name__)

MARKER = ".synthpipe-export"
JOURNAL = ".synthpipe-export.journal"  # files created since the marker was written, one a line
MARKER_NEXT = ".synthpipe-export.next"  # the next marker, renamed over MARKER when complete
RESERVED = frozenset({MARKER, JOURNAL, MARKER_NEXT})
MARKER_VERSION = 2


def _clean(rel: str) -> str | None:
    """``rel`` as a plain relative POSIX path inside the folder, or None when it is not one."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or str(path) in RESERVED:
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
    """An export folder claimed for ``files`` and the files it will make in ``folders``:
    :meth:`record` journals each such file before it is made, :meth:`finish` writes the marker."""

    root: Path
    files: list[str]
    kept_folders: set[str]  # folders an earlier export made that still hold something not ours
    info: dict[str, Any]
    folders: list[str] = field(default_factory=list)  # claimed folders whose files are named as they come
    foreign_names: frozenset[str] = frozenset()  # what was in those folders before and is not ours

    def record(self, rels: Iterable[str]) -> None:
        """Journal ``rels`` (inside the claimed folders) as ours, before they are created."""
        lines = []
        for rel in rels:
            clean = _clean(rel)
            if clean is None or not any(clean.startswith(f + "/") for f in self.folders):
                raise ValueError(f"not a path inside a claimed folder: {rel!r}")
            lines.append(clean + "\n")
        with (self.root / JOURNAL).open("a") as fh:  # flushed on close: a kill after this keeps it ours
            fh.writelines(lines)

    def foreign(self, rel: str) -> bool:
        """Whether ``rel`` was in the folder before this export and is not an export's own."""
        return rel in self.foreign_names

    def finish(self) -> None:
        """Write the marker with exactly the planned and journalled files and the folders that now
        exist, streamed (the journal is never held in memory whole), then drop the journal."""
        folders = _folders_of(self.files) | set(self.folders) | self.kept_folders
        nxt = self.root / MARKER_NEXT
        with nxt.open("w") as fh:
            head = {"version": MARKER_VERSION, **self.info}
            fh.write(json.dumps(head, indent=1)[:-2] + ',\n "files": [')
            first = True
            for rel in [*sorted(set(self.files)), *_journal(self.root)]:
                if (self.root / rel).is_file():
                    fh.write(("\n  " if first else ",\n  ") + json.dumps(rel))
                    first = False
                    folders.update(_folders_of([rel]))
            present = sorted(d for d in folders if (self.root / d).is_dir())
            fh.write('\n ],\n "folders": ' + json.dumps(present) + "\n}\n")
        os.replace(nxt, self.root / MARKER)
        (self.root / JOURNAL).unlink(missing_ok=True)


def _journal(root: Path) -> Iterator[str]:
    """The paths the journal names (those that are plain paths inside the folder), in order."""
    path = root / JOURNAL
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return
    with path.open() as fh:
        for line in fh:
            clean = _clean(line.rstrip("\n"))
            if clean is not None:
                yield clean


def _write_marker(root: Path, files: list[str], folders: set[str], info: dict[str, Any]) -> None:
    record = {"version": MARKER_VERSION, **info, "files": sorted(set(files)), "folders": sorted(folders)}
    nxt = root / MARKER_NEXT
    nxt.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(nxt, root / MARKER)


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
    files = {c for c in map(_clean, record.get("files") or []) if c} | set(_journal(root))
    folders = {c for c in map(_clean, record.get("folders") or []) if c}
    return Previous(frozenset(files), frozenset(folders))


def claim_folder(out_dir: Path, files: Iterable[str], *, folders: Iterable[str] = (), **info: Any) -> OwnedFolder:
    """Make ``out_dir`` ready for an export that writes ``files`` (relative paths; their folders
    follow) and files named as they come inside ``folders``: check that nothing there it would
    write over is someone else's, then remove what the earlier export wrote, and record the plan
    in the marker (so an export cut short is still ours to replace). ``info`` goes into the
    marker. Refusals are ``InputError`` naming the path."""
    planned: list[str] = []
    claimed: list[str] = []
    for rels, into in ((files, planned), (folders, claimed)):
        for f in rels:
            clean = _clean(f)
            if clean is None:
                raise ValueError(f"not a path inside an export folder: {f!r}")
            into.append(clean)
    st = _lstat(out_dir)
    if st is not None and not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file, not a folder", code="export.not_a_folder")
    previous = Previous(frozenset(), frozenset())
    if st is not None and any(out_dir.iterdir()):
        previous = read_marker(out_dir)
    all_folders = _folders_of(planned) | _folders_of(claimed) | set(claimed)
    conflicts = [rel for rel in sorted(all_folders) + sorted(set(planned))
                 if _lstat(out_dir / rel) is not None and not _ours(out_dir, rel, previous)]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise InputError(f"{out_dir / conflicts[0]}{more} was not written by synthpipe export (it is not listed "
                         f"in {out_dir / MARKER}) and the export would write over it; move it away or give a "
                         "new folder", code="export.path_not_ours")
    foreign: set[str] = set()  # what the export must not write over in its claimed folders
    for d in claimed:
        if (out_dir / d).is_dir():
            with os.scandir(out_dir / d) as entries:
                foreign.update(rel for e in entries if (rel := f"{d}/{e.name}") not in previous.files)
    kept = _remove_previous(out_dir, previous)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (JOURNAL, MARKER_NEXT):  # the earlier export's journal is folded into ``previous``
        leftover = _lstat(out_dir / name)
        if leftover is not None and stat.S_ISREG(leftover.st_mode):
            (out_dir / name).unlink()
    owned = OwnedFolder(out_dir, planned, kept, info, claimed, frozenset(foreign))
    _write_marker(out_dir, planned, _folders_of(planned) | set(claimed) | _folders_of(claimed) | kept, info)
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
