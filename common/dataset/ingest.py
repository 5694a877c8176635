"""``synthpipe ingest``: register every image under a folder, account for every file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.core.errors import ImageRejected, InputError
from common.core.progress import progress
from common.core.settings import Settings
from common.media.assets import Provenance, register_image_bytes
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
            reason = _check_file(file, limits.max_bytes)
            data = b""
            if reason is None:
                try:
                    data = file.read_bytes()
                except OSError as exc:
                    reason = f"unreadable: {exc.strerror or exc}"
            if reason is not None:
                report.rejected.append({"path": str(file), "reason": reason})
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


def _check_file(file: Path, max_bytes: int) -> str | None:
    """A reason to refuse ``file`` before reading it, or None."""
    try:
        st = file.stat()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if file.is_symlink() and file.is_dir():
        return "symlinked folder not followed"
    if not file.is_file():
        return "not a regular file"
    if st.st_size > max_bytes:
        return ImageRejected(f"too large: {st.st_size} bytes (limit {max_bytes})").reason
    return None
