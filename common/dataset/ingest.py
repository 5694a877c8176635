"""``synthpipe ingest``: register every image under a folder, account for every file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.core.errors import InputError
from common.core.progress import progress
from common.core.settings import Settings
from common.media.assets import Provenance, register_image_bytes
from common.media.files import FileRefused, read_regular_file
from common.store.db import Database
from common.store.storage import Storage

log = logging.getLogger(__name__)

COMMIT_EVERY = 50


@dataclass
class IngestReport:
    registered: int = 0
    duplicates: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"registered": self.registered, "duplicates": self.duplicates, "rejected": self.rejected}


def iter_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (or ``root`` itself), sorted; symlinked folders not followed."""
    if root.is_file():
        return [root]
    files: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        # a symlinked folder is listed (and refused) rather than followed: links can loop
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]
        files.extend(Path(folder) / name for name in sorted(names + links))
    return files


def ingest(path: Path, role: str, *, db: Database, storage: Storage, settings: Settings) -> IngestReport:
    """Register images under ``path`` with ``role``; each file ends registered, duplicate or rejected."""
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    report = IngestReport()
    files = iter_files(path)
    limits = settings.images
    pending = 0
    with db.session() as session:
        for file in progress(files, desc="ingest", unit="file"):
            try:
                data = _read(file, limits.max_bytes)
            except FileRefused as exc:
                report.rejected.append({"path": str(file), "reason": str(exc)})
                continue
            reg = register_image_bytes(
                session, data, role=role, storage=storage, limits=limits,
                provenance=Provenance(source_path=str(file.resolve())),
            )
            if reg.status == "registered":
                report.registered += 1
                pending += 1
            elif reg.status in ("duplicate", "near_duplicate"):
                report.duplicates += 1
            else:
                report.rejected.append({"path": str(file), "reason": reg.reason or "rejected"})
            if pending >= COMMIT_EVERY:  # bound the work a crash can lose
                session.commit()
                pending = 0
    log.info("ingest %s: %d registered, %d duplicates, %d rejected", path, report.registered,
             report.duplicates, len(report.rejected))
    return report


def _read(file: Path, max_bytes: int) -> bytes:
    """The file's bytes, or :class:`FileRefused` (FIFOs, devices, sockets, symlinked folders and
    oversized files are refused before they are opened)."""
    if file.is_symlink() and file.is_dir():
        raise FileRefused("symlinked folder not followed")
    return read_regular_file(file, max_bytes)
