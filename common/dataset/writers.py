"""The export layouts, each written row by row as rows stream in (nothing is held for the end).

- :class:`ImageFolderWriter`: ``train/metadata.jsonl`` line by line and ``train/images/<sha>.<ext>``
  copied as they come (the stored bytes, never re-encoded); ``datasets.load_dataset(OUT)`` reads it.
- :class:`ParquetWriter`: ``data/train-XXXXX-of-YYYYY.parquet`` written with pyarrow, one
  ``ParquetWriter`` per shard, images embedded in the ``datasets`` Image encoding (``{bytes, path}``
  structs, the features in the schema's ``huggingface`` metadata, as ``Dataset.to_parquet`` writes);
  ``datasets.load_dataset("parquet", data_dir=OUT)`` reads it.
- :class:`WebDatasetWriter`: ``data/train-000000.tar`` … one sample per edit (``<key>.input.<ext>``,
  ``<key>.edited.<ext>``, ``<key>.garment_<i>.<ext>``, ``<key>.json``), for streaming trainers.

Shards are cut before the row that would take a shard past ``shard_size`` bytes (images plus an
estimate of the text; a row larger than the limit gets a shard of its own). The rows come in
edit-id order and every size is a property of the row, so the cut falls at the same rows every
time. Parquet's total is in each name and is known only at the end: shards are written under
temporary names (``data/.partial-train-00000.parquet``, hidden, so ``datasets`` never reads one)
and renamed when the last is closed. Every file is journalled (:meth:`OwnedFolder.record`) before
it is created, so an export killed mid-way still owns all it wrote; a rerun removes it and writes
the same bytes again (fixed writer settings, tar headers without times or owners).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from typing import Any

from common.core.errors import InputError
from common.dataset.outfolder import OwnedFolder
from common.store.storage import Storage

DEFAULT_SHARD_SIZE = 500_000_000
ROW_GROUP_BYTES = 32 * 2**20  # a row group is written once it holds this much (or ROW_GROUP_ROWS rows)
ROW_GROUP_ROWS = 100  # what ``datasets`` uses for image datasets
ROW_OVERHEAD = 1024  # bytes counted per row besides its images and text
BLOCK = tarfile.BLOCKSIZE
PARQUET_FOLDER = "data"
WEBDATASET_FOLDER = "data"
IMAGES_FOLDER = "train/images"
METADATA = "train/metadata.jsonl"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """Bytes from ``500MB``, ``64MiB``, ``1.5GB`` or a plain number of bytes; ``ValueError`` else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (give bytes, or a number with KB, MB, GB, KiB, MiB or GiB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"a shard size must be at least 1 byte, not {text!r}")
    return size


def image_name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]  # content-addressed: the name is the hash


def _extension(uri: str) -> str:
    name = image_name(uri)
    return name.rsplit(".", 1)[1].lower() if "." in name else "img"


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    """The row without its image URIs."""
    return {k: v for k, v in row.items() if not k.endswith(("_uri", "_uris"))}


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    return 8


def _refuse(owned: OwnedFolder, rel: str) -> InputError:
    return InputError(f"{owned.root / rel} was not written by synthpipe export and the export would write over "
                      "it; move it away and export again", code="export.path_not_ours")


def _create(owned: OwnedFolder, rel: str) -> Any:
    """``rel`` opened for writing, journalled first; refused when something not ours is there."""
    if owned.foreign(rel):
        raise _refuse(owned, rel)
    owned.record([rel])
    return (owned.root / rel).open("xb")


def copy_once(storage: Storage, owned: OwnedFolder, folder: str, uri: str) -> str:
    """The stored bytes of ``uri`` as ``folder/<sha256>.<ext>`` (never re-encoded; written once however
    many rows name it); returns that path, relative to the export folder."""
    rel = f"{folder}/{image_name(uri)}"
    if not (owned.root / rel).exists():  # written for an earlier row (or someone else's: refused)
        with _create(owned, rel) as fh:
            fh.write(storage.get(uri))
    elif owned.foreign(rel):
        raise _refuse(owned, rel)
    return rel


def write_new(owned: OwnedFolder, rel: str, data: bytes) -> None:
    """``data`` as the new file ``rel`` in a claimed folder (journalled first; refused when not ours)."""
    with _create(owned, rel) as fh:
        fh.write(data)


def features_of(metrics: list[str]) -> Any:
    """The ``datasets`` features of an exported row (images, text, lists, one float per metric)."""
    from datasets import Features, Image, List, Value

    text = Value("string")
    number = Value("float64")
    features = {
        "input_image": Image(), "edit_prompt": text, "edited_image": Image(), "garment_images": List(Image()),
        "edit_id": Value("int64"), "origin": text, "decision": text, "reasons": List(text),
        "ai_decision": text, "review_decision": text, "review_tags": List(text), "reviewers": List(text),
        "failed_checks": text, "judge": text, "scores": text,
        "negative_prompt": text, "recipe": text, "confidence": number, "feasibility": text,
        "analysis": text, "keywords": text, "variation": text, "provenance": text,
        "source_urls": List(text), "page_urls": List(text), "source_paths": List(text), "sites": List(text),
        "categories": List(text), "licences": List(text), "found_via": List(text), "input_sha256": text,
        "edited_sha256": text,
        "vl_backend": text, "vl_model": text, "vl_params": text, "prompt_version": text,
        "schema_version": text, "edit_backend": text, "edit_model": text, "edit_params": text,
        "seed": Value("int64"), "item_set_key": text, "vl_job_key": text,
        "candidate": Value("int64"), "selection": text, "selection_rank": Value("int64"), "selection_by": text,
        "selection_why": text, "selection_note": text,
    }
    for name in metrics:
        features.setdefault(name, number)
    return Features(features)


class ImageFolderWriter:
    """``train/metadata.jsonl`` and ``train/images/`` (see the module's docstring)."""

    folders = [IMAGES_FOLDER]
    files = [METADATA]

    def __init__(self, storage: Storage, owned: OwnedFolder, metrics: list[str]) -> None:
        self.storage, self.owned = storage, owned
        (owned.root / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
        self.metadata = (owned.root / METADATA).open("w")

    def _copy(self, uri: str) -> str:
        return copy_once(self.storage, self.owned, IMAGES_FOLDER, uri).removeprefix("train/")

    def write(self, row: dict[str, Any]) -> None:
        record = _fields(row)
        record["input_image_file_name"] = self._copy(row["input_uri"])
        record["edited_image_file_name"] = self._copy(row["edited_uri"])
        record["garment_images_file_names"] = [self._copy(u) for u in row["garment_uris"]]
        self.metadata.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.metadata.close()

    def abort(self) -> None:
        self.metadata.close()


class _Shards:
    """Rows into shards of at most ``shard_size`` bytes (a row larger than that alone in one)."""

    folder = PARQUET_FOLDER
    slack = 0  # bytes a shard's file holds besides its rows (a tar's end blocks)

    def __init__(self, storage: Storage, owned: OwnedFolder, shard_size: int) -> None:
        self.storage, self.owned, self.shard_size = storage, owned, shard_size
        self.shards = 0  # shards opened so far
        self.shard_bytes = 0
        self.open = False
        (owned.root / self.folder).mkdir(parents=True, exist_ok=True)

    def _images(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's image bytes, by role."""
        return {"input": self.storage.get(row["input_uri"]), "edited": self.storage.get(row["edited_uri"]),
                "garments": [self.storage.get(u) for u in row["garment_uris"]]}

    def write(self, row: dict[str, Any]) -> None:
        images = self._images(row)
        payload, size = self._prepare(row, images)
        if self.open and self.shard_bytes + size + self.slack > self.shard_size:
            self._close_shard()
        if not self.open:
            self._open_shard(self.shards)
            self.shards += 1
            self.open, self.shard_bytes = True, 0
        self.shard_bytes += size
        self._add(payload, size)

    def close(self) -> None:
        if self.open:
            self._close_shard()

    def abort(self) -> None:
        """Close what is open, name nothing final (a failed export's shards stay partial)."""
        if self.open:
            self._close_shard()

    def _close_shard(self) -> None:
        self._finish_shard()
        self.open = False

    def _open_shard(self, index: int) -> None:
        raise NotImplementedError

    def _prepare(self, row: dict[str, Any], images: dict[str, Any]) -> tuple[Any, int]:
        """What :meth:`_add` writes for ``row``, and its size in bytes."""
        raise NotImplementedError

    def _add(self, payload: Any, size: int) -> None:
        raise NotImplementedError

    def _finish_shard(self) -> None:
        raise NotImplementedError


class ParquetWriter(_Shards):
    """``data/train-XXXXX-of-YYYYY.parquet`` (see the module's docstring)."""

    folders = [PARQUET_FOLDER]
    files: list[str] = []

    def __init__(self, storage: Storage, owned: OwnedFolder, metrics: list[str], *,
                 shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        super().__init__(storage, owned, shard_size)
        self.schema = features_of(metrics).arrow_schema
        self.writer: Any = None
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0

    @staticmethod
    def partial(index: int) -> str:
        return f"{PARQUET_FOLDER}/.partial-train-{index:05d}.parquet"

    @staticmethod
    def final(index: int, total: int) -> str:
        return f"{PARQUET_FOLDER}/train-{index:05d}-of-{total:05d}.parquet"

    def _open_shard(self, index: int) -> None:
        import pyarrow.parquet as pq

        sink = _create(self.owned, self.partial(index))
        # fixed settings: the same rows give the same bytes
        self.writer = pq.ParquetWriter(sink, self.schema, compression="snappy", version="2.6",
                                       write_statistics=True, use_dictionary=True)
        self.sink = sink

    def _prepare(self, row: dict[str, Any], images: dict[str, Any]) -> tuple[Any, int]:
        record = _fields(row)
        record["input_image"] = {"bytes": images["input"], "path": None}
        record["edited_image"] = {"bytes": images["edited"], "path": None}
        record["garment_images"] = [{"bytes": b, "path": None} for b in images["garments"]]
        # before encoding and compression: a shard's file is at most this, often less
        size = (ROW_OVERHEAD + len(images["input"]) + len(images["edited"])
                + sum(len(g) for g in images["garments"]) + sum(_text_bytes(v) for v in row.values()))
        return record, size

    def _add(self, payload: Any, size: int) -> None:
        self.buffer.append(payload)
        self.buffer_bytes += size
        if len(self.buffer) >= ROW_GROUP_ROWS or self.buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema),
                                    row_group_size=len(self.buffer))
        self.buffer, self.buffer_bytes = [], 0

    def _finish_shard(self) -> None:
        self._flush()
        self.writer.close()
        self.sink.close()
        self.writer = None

    def close(self) -> None:
        super().close()
        total = self.shards
        finals = [self.final(i, total) for i in range(total)]
        for rel in finals:
            if self.owned.foreign(rel):
                raise _refuse(self.owned, rel)
        self.owned.record(finals)
        for i, rel in enumerate(finals):
            os.replace(self.owned.root / self.partial(i), self.owned.root / rel)


class WebDatasetWriter(_Shards):
    """``data/train-000000.tar`` … (see the module's docstring)."""

    folder = WEBDATASET_FOLDER
    folders = [WEBDATASET_FOLDER]
    files: list[str] = []

    def __init__(self, storage: Storage, owned: OwnedFolder, metrics: list[str], *,
                 shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        super().__init__(storage, owned, shard_size)
        self.tar: tarfile.TarFile | None = None

    @staticmethod
    def name(index: int) -> str:
        return f"{WEBDATASET_FOLDER}/train-{index:06d}.tar"

    def _open_shard(self, index: int) -> None:
        self.sink = _create(self.owned, self.name(index))
        self.tar = tarfile.open(fileobj=self.sink, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed per shard)

    slack = 2 * BLOCK + tarfile.RECORDSIZE  # the end-of-archive blocks and the padding to a whole record

    def _prepare(self, row: dict[str, Any], images: dict[str, Any]) -> tuple[Any, int]:
        key = f"{int(row['edit_id']):010d}"  # webdataset's key: the name up to the first dot
        members = [(f"{key}.input.{_extension(row['input_uri'])}", images["input"]),
                   (f"{key}.edited.{_extension(row['edited_uri'])}", images["edited"])]
        members += [(f"{key}.garment_{i}.{_extension(uri)}", data)
                    for i, (uri, data) in enumerate(zip(row["garment_uris"], images["garments"], strict=True))]
        members.append((f"{key}.json", json.dumps(_fields(row), sort_keys=True).encode()))
        # exactly what the tar holds: a header block per member, its data padded to whole blocks
        return members, sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for _, data in members)

    def _add(self, payload: Any, size: int) -> None:
        assert self.tar is not None
        for name, data in payload:
            info = tarfile.TarInfo(name)  # no times, owners or modes of this machine: the same bytes every time
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data), 0, 0o644, 0, 0, "", "")
            self.tar.addfile(info, io.BytesIO(data))

    def _finish_shard(self) -> None:
        assert self.tar is not None
        self.tar.close()
        self.sink.close()
        self.tar = None


WRITERS: dict[str, type[ImageFolderWriter] | type[ParquetWriter] | type[WebDatasetWriter]] = {
    "imagefolder": ImageFolderWriter, "parquet": ParquetWriter, "webdataset": WebDatasetWriter}


def open_writer(fmt: str, storage: Storage, owned: OwnedFolder, metrics: list[str], shard_size: int) -> Any:
    cls = WRITERS[fmt]
    if cls is ImageFolderWriter:
        return ImageFolderWriter(storage, owned, metrics)
    return cls(storage, owned, metrics, shard_size=shard_size)  # type: ignore[call-arg]


def layout_paths(fmt: str) -> tuple[list[str], list[str]]:
    """(files named in advance, folders whose files are named as they come) of a layout."""
    cls = WRITERS[fmt]
    return list(cls.files), list(cls.folders)
