"""s3:// storage against a real S3-compatible server run on 127.0.0.1 (moto's server mode):
endpoint, region and credentials from settings or the AWS variables, write-once content-addressed
puts, settings errors for a missing bucket or refused credentials, and a put that dies mid-way."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fixtures.s3 import KEY, REGION, SECRET, S3Server, s3_env

from common.core.errors import ConfigError
from common.core.settings import reset_settings
from common.store.storage import Storage, get_storage


def _use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    import common.store.storage

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(common.store.storage, "_STORES", {})
    reset_settings()


def test_put_get_and_duplicates_through_the_settings(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.bucket("synthpipe-settings")
    _use(monkeypatch, {**s3_env(s3_server.endpoint), "SYNTHPIPE_STORAGE_URL": f"s3://{bucket}/objects"})
    store = get_storage()
    data = b"\x89PNG not really, but bytes" * 50
    first = store.put(data, "PNG")
    sha = hashlib.sha256(data).hexdigest()
    assert first.created and first.sha256 == sha
    assert first.uri == f"s3://{bucket}/objects/{sha[:2]}/{sha[2:4]}/{sha}.png"
    assert store.get(first.uri) == data and store.exists(first.uri)
    again = store.put(data, "png")
    assert again == type(first)(first.uri, sha, len(data), created=False)
    other = store.put(b"other bytes", "jpg")
    assert other.created and other.uri != first.uri
    # nothing but the final content keys: no temporary or partial objects
    assert s3_server.keys(bucket) == sorted(u.removeprefix(f"s3://{bucket}/") for u in (first.uri, other.uri))
    assert s3_server.client().get_object(Bucket=bucket, Key=first.uri.split("/", 3)[3])["Body"].read() == data


def test_a_racing_writer_of_the_same_bytes_is_a_no_op(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key was written by another machine after this one looked: the write-once put is
    refused by the server (If-None-Match) and reported as already stored."""
    bucket = s3_server.bucket("synthpipe-race")
    _use(monkeypatch, {**s3_env(s3_server.endpoint), "SYNTHPIPE_STORAGE_URL": f"s3://{bucket}"})
    store = get_storage()
    data = b"same bytes on two machines"
    path = store.path_for(hashlib.sha256(data).hexdigest(), "bin")
    s3_server.client().put_object(Bucket=bucket, Key=path.split("/", 1)[1], Body=b"first writer")
    store.fs.invalidate_cache()
    monkeypatch.setattr(store.fs, "exists", lambda _path: False)  # it looked before the other one wrote
    assert store.put(data, "bin").created is False
    assert s3_server.client().get_object(Bucket=bucket, Key=path.split("/", 1)[1])["Body"].read() == b"first writer"


def test_the_standard_aws_variables_are_used_when_settings_are_unset(s3_server: S3Server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.bucket("synthpipe-awsvars")
    for k in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    _use(monkeypatch, {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_DEFAULT_REGION": REGION,
                       "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                       "SYNTHPIPE_STORAGE_URL": f"s3://{bucket}/x"})
    stored = get_storage().put(b"from the AWS variables", "txt")
    assert stored.created and s3_server.keys(bucket) == [stored.uri.removeprefix(f"s3://{bucket}/")]


def test_a_missing_bucket_is_a_settings_error_with_one_line(s3_server: S3Server, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, {**s3_env(s3_server.endpoint), "SYNTHPIPE_STORAGE_URL": "s3://no-such-bucket/objects"})
    with pytest.raises(ConfigError, match=r"storage_url \(SYNTHPIPE_STORAGE_URL\): bucket 'no-such-bucket' does "
                                          "not exist"):
        get_storage()
    photos = tmp_path / "photos"
    photos.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_") or k.startswith("SYNTHPIPE_TEST_")}
    env.update(s3_env(s3_server.endpoint), SYNTHPIPE_DATA_DIR=str(tmp_path / "data"),
               SYNTHPIPE_STORAGE_URL="s3://no-such-bucket/objects")
    from common.devkit.samples import write_samples

    folder = write_samples(photos, persons=1, garments=0, seed=1)["person"]
    out = subprocess.run([sys.executable, "-m", "common.cli", "ingest", str(folder), "--role", "person"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("synthpipe")]
    assert len(errors) == 1 and "bucket 'no-such-bucket' does not exist" in errors[0], out.stderr


def test_refused_credentials_are_a_settings_error(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    bucket = s3_server.bucket("synthpipe-auth")
    s3_server.require_auth(3)  # the three calls below create a user with a key and an S3 policy
    try:
        iam = boto3.client("iam", endpoint_url=s3_server.endpoint, region_name=REGION, aws_access_key_id=KEY,
                           aws_secret_access_key=SECRET)
        iam.create_user(UserName="worker")
        issued = iam.create_access_key(UserName="worker")["AccessKey"]
        iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        good = {**s3_env(s3_server.endpoint), "SYNTHPIPE_STORAGE_URL": f"s3://{bucket}",
                "SYNTHPIPE_STORAGE__S3_ACCESS_KEY_ID": issued["AccessKeyId"],
                "SYNTHPIPE_STORAGE__S3_SECRET_ACCESS_KEY": issued["SecretAccessKey"]}
        _use(monkeypatch, good)
        assert get_storage().put(b"with issued credentials", "txt").created
        _use(monkeypatch, {**good, "SYNTHPIPE_STORAGE__S3_SECRET_ACCESS_KEY": "wrong"})
        with pytest.raises(ConfigError, match="refused these credentials for bucket 'synthpipe-auth'"):
            get_storage()
    finally:
        s3_server.require_auth(float("inf"))  # type: ignore[arg-type]


class StallingProxy:
    """A TCP relay in front of the server that stops passing the client's bytes after
    ``stall_after`` of them: an upload is left hanging mid-body, as on a dying machine."""

    def __init__(self, upstream_port: int, stall_after: int) -> None:
        self.upstream_port, self.stall_after = upstream_port, stall_after
        self.sent = 0
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if from_client:
                    with self._lock:
                        room = self.stall_after - self.sent
                        if room <= 0:
                            self.stalled.set()
                            continue  # swallowed: the server never sees the rest
                        chunk = chunk[:room]
                        self.sent += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()


def test_a_put_that_dies_mid_way_leaves_no_object(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.bucket("synthpipe-dies")
    size = 3_000_000
    data = random.Random(7).randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    proxy = StallingProxy(int(s3_server.endpoint.rsplit(":", 1)[1]), stall_after=size // 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPIPE_") or k.startswith("SYNTHPIPE_TEST_")}
    env.update(s3_env(f"http://127.0.0.1:{proxy.port}"), SYNTHPIPE_DATA_DIR=str(tmp_path / "data"),
               SYNTHPIPE_STORAGE_URL=f"s3://{bucket}/objects")
    code = ("import random; from common.store.storage import get_storage; "
            f"get_storage().put(random.Random(7).randbytes({size}), 'bin'); print('finished')")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proxy.stalled.wait(60), "the upload never got a third of the way"
        child.send_signal(signal.SIGKILL)  # the machine dies with the body a third sent
        out, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL and b"finished" not in out
    finally:
        proxy.close()
    assert s3_server.keys(bucket) == []  # no partial object, under the final key or any other
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    store = Storage(f"s3://{bucket}/objects", {"endpoint_url": s3_server.endpoint, "key": KEY, "secret": SECRET,
                                               "client_kwargs": {"region_name": REGION}})
    path = store.path_for(sha, "bin")
    assert not store.exists(store.uri_for(path))
    redo = store.put(data, "bin")  # the job's retry, on another machine
    assert redo.created and store.get(redo.uri) == data
