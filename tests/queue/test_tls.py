"""Distributed mode across "machines" over TLS: a Redis of the test's own that speaks only TLS
and wants a password, certificates from scripts/make-certs.sh, PostgreSQL with verify-full,
S3 storage on a local S3 server, and two worker "machines" (own host names, own scratch folders)
sharing one job stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from fixtures.cluster import Cluster, ingest_photos, one_analysis_per_job
from fixtures.net import can_connect, free_port, wait_for
from fixtures.s3 import S3Server, s3_env
from sqlalchemy import create_engine, func, select, text

from common.core.settings import load_settings
from common.queue.app import celery_config
from common.store.rows import Edit, Job

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "tls-test-password-7f3a"
ACL_USER, ACL_PASSWORD = "worker", "acl-test-password-91c2"  # a Redis 6+ ACL user beside the default one


def make_certs(folder: Path) -> Path:
    subprocess.run([str(ROOT / "scripts" / "make-certs.sh"), str(folder)], check=True, capture_output=True,
                   timeout=60)
    return folder


class TlsRedis:
    """redis-server with TLS only (no plaintext port), a password and an ACL user, on 127.0.0.1."""

    def __init__(self, certs: Path, workdir: Path) -> None:
        self.port = free_port()
        self.ca = certs / "ca.crt"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: can_connect(self.port), 10, "TLS redis did not start")

    def url(self, password: str = PASSWORD, user: str = "") -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture
def tls_redis(certs: Path, tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(certs, tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


def probe_app(broker_url: str, ca_file: Path | None) -> Celery:
    """A Celery app configured exactly as synthpipe's, for this test process to look through."""
    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_config(load_settings(broker_url=broker_url, celery={"broker_ca_file": ca_file})))
    return app


def test_the_broker_certificate_and_password_are_checked(tls_redis: TlsRedis, tmp_path: Path) -> None:
    for url in (tls_redis.url(), tls_redis.url(ACL_PASSWORD, user=ACL_USER)):  # the password, or an ACL user
        with probe_app(url, tls_redis.ca).connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)
            assert conn.default_channel.client.ping()
    other_ca = make_certs(tmp_path / "other") / "ca.crt"
    for url, ca, reason in [(tls_redis.url(), other_ca, "CERTIFICATE_VERIFY_FAILED"),
                            (tls_redis.url(), None, "CERTIFICATE_VERIFY_FAILED"),
                            (tls_redis.url("wrong"), tls_redis.ca, "invalid username-password"),
                            (tls_redis.url(PASSWORD, user=ACL_USER), tls_redis.ca, "invalid username-password"),
                            (tls_redis.url().replace("rediss://", "redis://"), None, "")]:
        app = probe_app(url, ca)
        with app.connection_for_write() as conn, pytest.raises(Exception) as err:
            conn.ensure_connection(max_retries=0, timeout=5)
        assert reason in str(err.value), (url, ca, err.value)


def _machine_worker(machine_of: Cluster, env: dict[str, str], host: str, stage: str) -> subprocess.Popen[bytes]:
    """``synthpipe worker STAGE`` as if on machine ``host``: its own host name (a UTS namespace)
    and its own scratch folder; it shares only the broker, the database and the storage."""
    log = open(machine_of.tmp / f"worker-{host}-{stage}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
         sys.executable, "-m", "common.cli", "worker", stage, "--batch-size", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    machine_of.workers.append(proc)
    return proc


def _flower_sees(env: dict[str, str], tmp: Path, hosts: set[str]) -> dict[str, object]:
    import base64
    import urllib.request

    port = free_port()
    log = open(tmp / "flower.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "common.cli", "flower", "--port", str(port)],
                            env={**env, "SYNTHPIPE_FLOWER__BASIC_AUTH": "ops:pw"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    auth = "Basic " + base64.b64encode(b"ops:pw").decode()

    def get(path: str) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": auth})
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())

    try:
        wait_for(lambda: can_connect(port), 60, "flower to listen")
        queues = get("/api/queues/length")  # read from the broker over TLS
        workers: dict[str, object] = {}

        def all_seen() -> bool:
            workers.update(get("/api/workers?refresh=1"))  # type: ignore[arg-type]
            return {name.rsplit("@", 1)[1] for name in workers} >= hosts
        wait_for(all_seen, 60, f"flower to see workers on {hosts}", every=1)
        return {"queues": queues, "workers": workers}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_two_machines_share_one_job_stream_over_tls(cluster: Cluster, certs: Path,  # noqa: F811
                                                    tls_redis: TlsRedis, s3_server: S3Server) -> None:
    bucket = s3_server.bucket("synthpipe-two-machines")
    cluster.env.update(s3_env(s3_server.endpoint), SYNTHPIPE_BROKER_URL=tls_redis.url(),
                       SYNTHPIPE_CELERY__BROKER_CA_FILE=str(tls_redis.ca),
                       SYNTHPIPE_STORAGE_URL=f"s3://{bucket}/objects")
    machines = {}
    for host in ("machine-a", "machine-b"):
        scratch = cluster.tmp / host
        machines[host] = {**cluster.env, "SYNTHPIPE_DATA_DIR": str(scratch / "data"), "HF_HOME": str(scratch / "hf"),
                          "TMPDIR": str(scratch)}
        scratch.mkdir()
    ingest_photos(cluster)  # the producer (this "first machine") ingests into S3
    for host, env in machines.items():
        for stage in ("vl", "edit"):
            _machine_worker(cluster, env, host, stage)
    probe = probe_app(tls_redis.url(), tls_redis.ca)

    def all_ready() -> bool:
        names = [name for reply in probe.control.ping(timeout=1.0) for name in reply]
        return len(names) == 4 and {n.rsplit("@", 1)[1] for n in names} == set(machines)
    try:
        wait_for(all_ready, 150, "four workers on two machines to answer over TLS", every=1)
    except AssertionError:
        raise AssertionError(cluster.logs()) from None
    monitor = _flower_sees(cluster.env, cluster.tmp, set(machines))
    assert {q["name"] for q in monitor["queues"]["active_queues"]} >= {"vl", "edit"}  # type: ignore[index]

    cluster.cli("pair", "--recipe", "tryon", "--limit", "6", "--seed", "11")  # 6 messages over TLS
    vl = cluster.wait_done("vl", 6)
    assert vl.get("succeeded", 0) + vl.get("skipped", 0) == 6, vl
    # one more job queued with no message (a producer that lost its broker): a worker's sweeper
    # finds it and sends its message, over TLS too
    code = ("from common.store.db import get_database; from common.domain.pairing import pair; "
            "from common.core.settings import get_settings\n"
            "with get_database().session() as s:\n    print(pair(s, get_settings(), 'tryon', limit=1, seed=12).jobs)")
    quiet = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.split()[-1] == "1", quiet.stdout + quiet.stderr[-2000:]
    vl = cluster.wait_done("vl", 7)
    assert vl.get("succeeded", 0) + vl.get("skipped", 0) == 7, vl
    edit = cluster.wait_done("edit", vl.get("succeeded", 0))
    assert edit.get("succeeded", 0) == vl.get("succeeded", 0) > 0, edit

    # exactly once: one attempt per job, one analysis per job, one edit per edit job
    one_analysis_per_job(cluster)
    assert cluster.scalar(select(func.max(Job.attempts)).where(Job.stage.in_(["vl", "edit"]))) == 1
    assert cluster.scalar(select(func.count()).select_from(Edit)) == edit["succeeded"]
    with cluster.engine.connect() as c:
        ran_on = {stage: {w.split(":", 1)[0] for (w,) in c.execute(select(Job.worker).where(Job.stage == stage))}
                  for stage in ("vl", "edit")}
        uris = [u for (u,) in c.execute(select(Edit.output_uri))]
    assert ran_on == {"vl": set(machines), "edit": set(machines)}, ran_on  # the stream was split
    # every output is in the shared bucket, none in a machine's scratch folder
    assert all(u.startswith(f"s3://{bucket}/objects/") for u in uris), uris
    assert set(uris) <= {f"s3://{bucket}/{k}" for k in s3_server.keys(bucket)}
    for host in machines:
        assert not [p for p in (cluster.tmp / host).rglob("objects/**/*") if p.is_file()], host

    # and readable from both machines, byte for byte what its name says
    code = ("import hashlib, json, sys; from common.store.storage import get_storage; s = get_storage(); "
            "print(json.dumps([hashlib.sha256(s.get(u)).hexdigest() == u.rsplit('/', 1)[1].split('.')[0] "
            "for u in json.loads(sys.argv[1])]))")
    for host, env in machines.items():
        out = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, sys.executable,
                              "-c", code, json.dumps(uris)], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == [True] * len(uris), host


def _private_postgres(certs: Path, home: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A PostgreSQL server of the test's own, in ``home``, that accepts only TLS (hostssl)."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip())
    if not (bindir / "initdb").exists():
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / name, home / name)
    (home / "server.key").chmod(0o600)
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(home, "postgres")
        for name in ("server.crt", "server.key"):
            shutil.chown(home / name, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    (home / "hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")
    port = free_port()
    proc = subprocess.Popen(
        [*run_as, str(bindir / "postgres"), "-D", str(home / "data"), "-p", str(port), "-k", str(home),
         "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", f"ssl_cert_file={home / 'server.crt'}",
         "-c", f"ssl_key_file={home / 'server.key'}", "-c", f"hba_file={home / 'hba.conf'}", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: can_connect(port), 30, "private postgres to listen")
    return proc, port


def test_postgres_sslmode_verify_full_with_a_ca_file(certs: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from common.core.settings import reset_settings
    from common.store.db import get_database, reset_databases

    home = Path(tempfile.mkdtemp(prefix="synthpipe-pg-"))  # outside pytest's folder, which postgres cannot enter
    proc, port = _private_postgres(certs, home)
    base = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    ca = certs / "ca.crt"
    try:
        # through SYNTHPIPE_DATABASE_URL alone, as the CLI reads it
        env = {**os.environ, "SYNTHPIPE_DATA_DIR": str(tmp_path / "data"),
               "SYNTHPIPE_DATABASE_URL": f"{base}?sslmode=verify-full&sslrootcert={ca}"}
        out = subprocess.run([sys.executable, "-m", "common.cli", "db", "upgrade"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        # through the database settings, the URL saying nothing of TLS
        monkeypatch.setenv("SYNTHPIPE_DATABASE_URL", base)
        monkeypatch.setenv("SYNTHPIPE_DATABASE__SSLMODE", "verify-full")
        monkeypatch.setenv("SYNTHPIPE_DATABASE__CA_FILE", str(ca))
        reset_settings()
        with get_database().engine.connect() as conn:
            encrypted = conn.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
            assert encrypted is True
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0  # the upgraded schema
        reset_databases()
        other_ca = make_certs(tmp_path / "other") / "ca.crt"
        for url, reason in [(f"{base}?sslmode=verify-full&sslrootcert={other_ca}", "certificate verify failed"),
                            (f"{base}?sslmode=disable", "no encryption")]:
            engine = create_engine(url)
            with pytest.raises(Exception) as err:
                engine.connect().close()
            engine.dispose()
            assert reason in str(err.value), err.value
    finally:
        reset_databases()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
