"""Content-addressed object storage behind fsspec.

Objects live at ``<root>/<aa>/<bb>/<sha256>.<ext>``. ``file://`` is the default; any fsspec
URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``) works with no code change. Writes are
atomic: on a local disk the bytes go to a temporary name in the same folder, are flushed, and
are renamed into place; object stores publish an object only when its upload completes, and
the upload asks for the key only if it is still free (``If-None-Match: *``), so an object is
written once and a racing duplicate put is a no-op.

``s3://`` takes its endpoint, region and credentials from the ``storage`` settings, or else
from the standard AWS variables and files (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``...); a missing bucket or refused credentials are settings errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from common.core.errors import ConfigError, TransientError
from common.core.settings import get_settings

if TYPE_CHECKING:
    from common.core.settings import StorageSettings

log = logging.getLogger(__name__)

S3_PROTOCOLS = ("s3", "s3a")
_KEY = "storage_url (SYNTHPIPE_STORAGE_URL)"


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

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"{_KEY}: cannot open {url!r}: {exc}") from None
        self.url = url
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        if self.local:
            os.makedirs(self.root, exist_ok=True)
        elif self.protocols & set(S3_PROTOCOLS):
            self._check_bucket()

    def _check_bucket(self) -> None:
        """Fail at start-up, naming the setting, when the bucket is missing or the credentials
        are refused, rather than on every job's first write."""
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise ConfigError(f"{_KEY}: bucket {bucket!r} does not exist at {self._endpoint()}: create it "
                              "first (aws s3 mb s3://BUCKET, or the store's console)") from None
        except PermissionError:
            raise ConfigError(f"{_KEY}: {self._endpoint()} refused these credentials for bucket {bucket!r}: "
                              "check storage.s3_access_key_id / storage.s3_secret_access_key "
                              "(SYNTHPIPE_STORAGE__S3_*) or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
        except OSError as exc:
            raise TransientError(f"storage: cannot reach {self._endpoint()} for bucket {bucket!r}: {exc}") from exc

    def _endpoint(self) -> str:
        return str(getattr(self.fs, "endpoint_url", None) or "AWS S3")

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
                self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:  # another writer published the same bytes first
            return StoredObject(self.uri_for(path), sha, len(data), created=False)
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
        fs, path = self._fs_for(uri)
        try:
            return bytes(fs.cat_file(path))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TransientError(f"storage read failed for {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_for(uri)
        return bool(fs.exists(path))

    def _fs_for(self, uri: str) -> tuple[Any, str]:
        """This store's filesystem (with its endpoint and credentials) for its own protocol;
        fsspec's default one for any other URI."""
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        if protocol in self.protocols:
            return self.fs, self.fs._strip_protocol(uri)
        return fsspec.core.url_to_fs(uri)


_STORES: dict[str, Storage] = {}


def get_storage(url: str | None = None) -> Storage:
    """The process-wide store for ``url`` (default: the settings' storage URL)."""
    if url is None:

        url = get_settings().storage_url
    assert url is not None
    store = _STORES.get(url)
    if store is None:

        store = _STORES[url] = Storage(url, storage_options(url, get_settings().storage))
    return store


def storage_options(url: str, settings: StorageSettings) -> dict[str, Any]:
    """fsspec options for ``url`` from the ``storage`` settings (s3:// only); a setting left
    unset (or empty, as compose passes an unset variable) leaves botocore to its standard AWS
    variables and files."""
    if url.split("://", 1)[0] not in S3_PROTOCOLS:
        return {}
    options: dict[str, Any] = {}
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    if settings.s3_access_key_id:
        options["key"] = settings.s3_access_key_id
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else ""
    if secret:
        options["secret"] = secret
    return options
