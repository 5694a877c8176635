"""Content-addressed object storage behind fsspec.

Objects live at ``<root>/<aa>/<bb>/<sha256>.<ext>``. ``file://`` is the default; any fsspec
URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``) works with no code change. Writes are
atomic: on a local disk the bytes go to a temporary name in the same folder, are flushed, and
are renamed into place; object stores publish an object only when its upload completes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from common.errors import ConfigError, TransientError

log = logging.getLogger(__name__)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size: int
    created: bool  # False when identical content was already stored


class Storage:
    """A content-addressed store rooted at an fsspec URL."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"storage_url (SYNTHPIPE_STORAGE_URL): cannot open {url!r}: {exc}") from None
        self.url = url
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    def path_for(self, sha: str, ext: str) -> str:
        return f"{self.root}/{sha[:2]}/{sha[2:4]}/{sha}.{ext.lower().lstrip('.')}"

    def uri_for(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def put(self, data: bytes, ext: str) -> StoredObject:
        """Store ``data`` under its sha256; storing the same bytes again is a no-op."""
        sha = sha256_hex(data)
        path = self.path_for(sha, ext)
        try:
            if self.fs.exists(path):
                return StoredObject(self.uri_for(path), sha, len(data), created=False)
            if self.local:
                self._put_local(path, data)
            else:
                self.fs.pipe_file(path, data)
        except OSError as exc:
            raise TransientError(f"storage write failed for {path}: {exc}") from exc
        return StoredObject(self.uri_for(path), sha, len(data), created=True)

    def _put_local(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see all bytes or no file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, uri: str) -> bytes:
        """The bytes of a stored object (any fsspec URI, not only this store's)."""
        try:
            with fsspec.open(uri, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TransientError(f"storage read failed for {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return bool(fs.exists(path))


_STORES: dict[str, Storage] = {}


def get_storage(url: str | None = None) -> Storage:
    """The process-wide store for ``url`` (default: the settings' storage URL)."""
    if url is None:
        from common.settings import get_settings

        url = get_settings().storage_url
    assert url is not None
    store = _STORES.get(url)
    if store is None:
        store = _STORES[url] = Storage(url)
    return store
