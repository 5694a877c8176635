"""``synthpipe import``: outside (input photo, instruction, edited photo) pairs become edits.

Anything ``datasets.load_dataset`` reads as an imagefolder or parquet works: synthpipe's own
export, diffusers' InstructPix2Pix layout (``input_image``, ``edit_prompt``, ``edited_image``),
a folder of parquet files, one parquet file. Images are read undecoded from the dataset and go
through the one safe loader (:func:`common.media.images.load_image`), so a hostile file is a rejected
row with a reason code, never a crash; a file a row names is read only when it is a regular file
(:func:`common.media.files.read_regular_file`: a FIFO or device is refused unopened). Text goes
through :mod:`common.store.sanitize` before the store: an instruction the database cannot hold
(``text.invalid``) or longer than ``imports.max_prompt_chars`` (``import.prompt_too_long``) is a
refused row; the other columns, kept as provenance, are repaired (NaN becomes null). Every row
ends imported, duplicate or rejected; each imported edit (origin ``imported``) is queued for
scoring when the score stage exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from common.core import stages
from common.core.errors import ImageRejected, InputError
from common.core.progress import progress
from common.core.settings import ImageSettings, Settings
from common.dataset.export import quiet_datasets
from common.domain.itemsets import ensure_item_set
from common.domain.scorequeue import queue_score
from common.media.assets import Provenance, register_image_bytes
from common.media.files import FileRefused, UnreadableFile, check_regular_file, read_regular_file
from common.media.images import LoadedImage, load_image
from common.store.db import Database
from common.store.rows import RECIPES, Edit
from common.store.sanitize import UnstorableText, json_safe, repaired_text, storable_text
from common.store.storage import Storage, sha256_hex

log = logging.getLogger(__name__)

COMMIT_EVERY = 50
FORMATS = ("auto", "imagefolder", "parquet")
#: longest text kept from one source column in an edit's provenance
MAX_SOURCE_TEXT = 2000


@dataclass(frozen=True)
class ColumnMap:
    """Which dataset column holds what (the flags ``--input-column`` etc. rename them)."""

    input: str = "input_image"
    prompt: str = "edit_prompt"
    edited: str = "edited_image"
    garments: str = "garment_images"
    recipe: str = "recipe"

    def image_columns(self) -> tuple[str, str]:
        return self.input, self.edited


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    queued: int = 0  # score jobs queued
    rejected: list[dict[str, Any]] = field(default_factory=list)
    edit_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "duplicates": self.duplicates, "rejected": self.rejected,
                "score_jobs": self.queued}


class RowRejected(Exception):
    """One row cannot be imported; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def reason(self) -> str:
        return f"{self.code}: {self}"


def import_pairs(path: Path, *, db: Database, storage: Storage, settings: Settings,
                 columns: ColumnMap | None = None, fmt: str = "auto") -> ImportReport:
    """Import every row of the dataset at ``path``; see the module docstring."""
    columns = columns or ColumnMap()
    report = ImportReport()
    source = str(path.resolve())
    root = path.resolve() if path.is_dir() else path.resolve().parent
    with tempfile.TemporaryDirectory(prefix="synthpipe-import-") as cache:
        splits = _load(path, fmt, cache)
        with db.session() as session:
            pending = 0
            for split, ds in splits.items():
                ds = _undecoded(ds, columns, path)
                extra = [c for c in ds.column_names
                         if c not in (columns.input, columns.edited, columns.garments)]
                for i, row in enumerate(progress(ds, desc=f"import {split}", unit="row", total=len(ds))):
                    try:
                        status, edit_id = _import_row(session, row, columns, extra, storage, settings,
                                                      root=root, provenance={"path": source, "split": split,
                                                                             "row": i})
                    except RowRejected as exc:
                        report.rejected.append({"row": i, "split": split, "reason": exc.reason})
                        continue
                    if status == "duplicate":
                        report.duplicates += 1
                        continue
                    assert edit_id is not None
                    report.imported += 1
                    report.edit_ids.append(edit_id)
                    report.queued += _queue_score(session, edit_id)
                    pending += 1
                    if pending >= COMMIT_EVERY:  # bound the work a crash can lose
                        session.commit()
                        pending = 0
    log.info("import %s: %d imported, %d duplicates, %d rejected, %d score jobs", path, report.imported,
             report.duplicates, len(report.rejected), report.queued)
    return report


# --- reading the dataset ---------------------------------------------------------------------


def _load(path: Path, fmt: str, cache: str) -> dict[str, Any]:
    """Every split of the dataset at ``path``, images undecoded."""
    import datasets

    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    if fmt == "auto":
        fmt = "parquet" if (path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet")))) \
            else "imagefolder"
    if path.is_file():
        kwargs: dict[str, Any] = {"data_files": str(path)}
    else:
        kwargs = {"data_dir": str(path)}
    try:
        with quiet_datasets():
            loaded = datasets.load_dataset(fmt, cache_dir=cache, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable folders
        why = exc.__cause__ or exc  # a generation error's cause says which file and why
        text = " ".join(str(why).split())[:300] or type(why).__name__
        raise InputError(f"cannot read {path} as {fmt}: {text} (give --format, or a folder with "
                         "metadata.jsonl and images, or parquet files)", code="import.unreadable") from None
    return dict(loaded.items())


def _undecoded(ds: Any, columns: ColumnMap, path: Path) -> Any:
    """``ds`` with its image columns cast to undecoded images (bytes and path, never a PIL image),
    so the safe loader sees every byte first. A missing column is an error naming the flag."""
    from datasets import Image, List, Sequence

    flags = {columns.input: "--input-column", columns.prompt: "--prompt-column",
             columns.edited: "--edited-column"}
    for name, flag in flags.items():
        if name not in ds.column_names:
            raise InputError(f"{path}: no column {name!r} (columns: {', '.join(ds.column_names)}); "
                             f"name yours with {flag}", code="import.column_missing")
    features = ds.features.copy()
    for name in columns.image_columns():
        features[name] = Image(decode=False)
    if columns.garments in ds.column_names:
        feature = features[columns.garments]
        if isinstance(feature, List | Sequence):
            features[columns.garments] = List(Image(decode=False))
        else:
            features[columns.garments] = Image(decode=False)
    try:
        with quiet_datasets():
            return ds.cast(features)
    except Exception as exc:
        raise InputError(f"{path}: image columns are not images: {' '.join(str(exc).split())[:300]}",
                         code="import.column_invalid") from None


def _image_bytes(value: Any, column: str, root: Path, limits: ImageSettings) -> bytes:
    """The raw bytes of one undecoded image cell. A file it names must be a regular file (a FIFO,
    device or socket is refused unopened), lie inside the dataset's folder (``../`` or a symlink
    out of it is refused) and be within the byte limit before it is read."""
    if value is None:
        raise RowRejected("import.image_missing", f"{column}: empty")
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is None:
        where = value.get("path") if isinstance(value, dict) else None
        if not where:
            raise RowRejected("import.image_missing", f"{column}: no bytes and no path")
        named = Path(where)
        try:
            check_regular_file(named, limits.max_bytes)
            file = named.resolve()
            if not file.is_relative_to(root):
                raise RowRejected("import.path_outside", f"{column}: {where} lies outside {root}")
            data = read_regular_file(file, limits.max_bytes)
        except UnreadableFile as exc:
            raise RowRejected("import.image_unreadable", f"{column}: {where}: {exc}") from None
        except FileRefused as exc:
            raise RowRejected(exc.code, f"{column}: {where}: {exc}") from None
    return bytes(data)


def _safe_load(data: bytes, column: str, limits: ImageSettings) -> LoadedImage:
    try:
        return load_image(data, limits)
    except ImageRejected as exc:
        raise RowRejected(exc.code, f"{column}: {exc.reason}") from None


# --- one row ---------------------------------------------------------------------------------


def import_key(input_sha: str, edited_sha: str, prompt: str) -> str:
    """The identity of an imported pair: the same photos and instruction are one edit."""
    return hashlib.sha256(f"{input_sha}\n{edited_sha}\n{prompt}".encode()).hexdigest()


def _import_row(session: Session, row: dict[str, Any], columns: ColumnMap, extra: list[str], storage: Storage,
                settings: Settings, *, root: Path, provenance: dict[str, Any]) -> tuple[str, int | None]:
    """``("imported", edit_id)`` or ``("duplicate", None)``; raises :class:`RowRejected`."""
    limits = settings.images
    prompt = row.get(columns.prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowRejected("import.prompt_missing", f"{columns.prompt}: no instruction")
    prompt = prompt.strip()
    if len(prompt) > settings.imports.max_prompt_chars:
        raise RowRejected("import.prompt_too_long",
                          f"{columns.prompt}: {len(prompt)} characters (limit {settings.imports.max_prompt_chars}, "
                          "imports.max_prompt_chars)")
    try:
        storable_text(prompt, columns.prompt)
    except UnstorableText as exc:
        raise RowRejected(exc.code, str(exc)) from None
    input_bytes = _image_bytes(row.get(columns.input), columns.input, root, limits)
    edited_bytes = _image_bytes(row.get(columns.edited), columns.edited, root, limits)
    # the key is of the original bytes, so a row imported before is known without decoding it again
    key = import_key(sha256_hex(input_bytes), sha256_hex(edited_bytes), prompt)
    if session.scalar(select(Edit.id).where(Edit.import_key == key)) is not None:
        return "duplicate", None
    _safe_load(input_bytes, columns.input, limits)
    loaded_edit = _safe_load(edited_bytes, columns.edited, limits)
    garments = row.get(columns.garments) or []
    if isinstance(garments, dict):  # one garment image rather than a list
        garments = [garments]
    garment_bytes = [_image_bytes(g, f"{columns.garments}[{j}]", root, limits) for j, g in enumerate(garments)]
    for j, data in enumerate(garment_bytes):
        _safe_load(data, f"{columns.garments}[{j}]", limits)
    recipe = row.get(columns.recipe) or ("tryon" if garment_bytes else "enrich")
    if recipe not in RECIPES:
        raise RowRejected("import.recipe_unknown", f"{columns.recipe}: {recipe!r} (allowed: {', '.join(RECIPES)})")


    source = Provenance(source_path=provenance["path"])
    primary_role = "person" if recipe == "tryon" else "character"
    members = [(_asset(session, input_bytes, primary_role, source, storage, limits, columns.input), primary_role)]
    members += [(_asset(session, data, "garment", source, storage, limits, f"{columns.garments}[{j}]"), "garment")
                for j, data in enumerate(garment_bytes)]
    item_set_id = _item_set(session, recipe, members)
    stored = storage.put(edited_bytes, loaded_edit.extension)
    edit = Edit(
        item_set_id=item_set_id, origin="imported", edit_prompt=prompt, import_key=key,
        provenance={**provenance, "columns": {"input": columns.input, "prompt": columns.prompt,
                                              "edited": columns.edited, "garments": columns.garments,
                                              "recipe": columns.recipe},
                    "source": _source_values(row, extra, columns)},
        backend="imported", model_id=repaired_text(str(row.get("edit_model") or "")), params={},
        seed=_seed(row.get("seed")), output_uri=stored.uri, output_sha256=stored.sha256,
        width=loaded_edit.width, height=loaded_edit.height, timings={},
    )
    try:
        with session.begin_nested():  # another import of the same rows may race this one
            session.add(edit)
            session.flush()
    except IntegrityError:
        return "duplicate", None
    except DataError as exc:  # a value the sanitising let through: this row is refused, not the import
        log.warning("import: the store refused row %s: %s", provenance.get("row"), exc.orig or exc)
        raise RowRejected("import.store_refused",
                          f"the database refused the row: {' '.join(str(exc.orig or exc).split())[:200]}") from None
    return "imported", edit.id


def _asset(session: Session, data: bytes, role: str, source: Provenance, storage: Storage,
           limits: ImageSettings, column: str) -> int:
    reg = register_image_bytes(session, data, role=role, provenance=source, storage=storage, limits=limits)
    if reg.asset_id is None:  # the loader passed these bytes a moment ago; only a change of limits gets here
        raise RowRejected("image.rejected", f"{column}: {reg.reason}")
    return reg.asset_id


def _item_set(session: Session, recipe: str, members: list[tuple[int, str]]) -> int:
    """The item set of these assets for ``recipe``, made unless it exists."""
    digest = hashlib.sha256(",".join(f"{r}:{a}" for a, r in members).encode()).hexdigest()
    return ensure_item_set(session, f"import:{recipe}:{digest}", recipe, members)


def _source_values(row: dict[str, Any], extra: list[str], columns: ColumnMap) -> dict[str, Any]:
    """The row's other columns, as values every store holds (:func:`json_safe`: NaN and infinities
    become null, NUL characters are dropped), long text cut, for provenance."""
    out: dict[str, Any] = {}
    for name in extra:
        if name == columns.prompt:
            continue
        try:
            value = json_safe(row.get(name))
        except TypeError:
            continue  # binary or other non-JSON values are not provenance
        text = json.dumps(value, allow_nan=False)
        out[repaired_text(name)] = value if len(text) <= MAX_SOURCE_TEXT else text[:MAX_SOURCE_TEXT]
    return out


def _seed(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else 0


def _queue_score(session: Session, edit_id: int) -> int:
    """Queue the edit's score job when the score stage is registered; 1 if queued."""
    if "score" not in stages.names():
        return 0

    return int(queue_score(session, edit_id) is not None)
