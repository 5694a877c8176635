"""The compose files' security, checked without a Docker engine: TLS and passwords for Redis and
PostgreSQL with no default password, and a worker-only file for a second machine whose URLs,
filled from .env.example, pass the same start-up rule the workers apply."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from common.cli import build_parser
from common.core import security

ROOT = Path(__file__).resolve().parents[2]
FILES = ("docker-compose.yml", "docker-compose.worker.yml")
VAR = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k: v for k, v in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, as compose applies them."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name, "")
        if op == "?" and not got:
            raise LookupError(f"{name}: {arg}")
        return got or (arg if op == "-" else "")
    return VAR.sub(one, value).replace("$$", "$")


@pytest.mark.parametrize("name", FILES)
def test_no_password_has_a_default(name: str) -> None:
    text = (ROOT / name).read_text()
    for m in VAR.finditer(text):
        var, op, default = m.groups()
        if var in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "FIRST_MACHINE"):
            assert op == "?", f"{name}: {m.group(0)} must be required (${{VAR:?message}})"
        elif "PASSWORD" in var or "SECRET" in var:  # optional ones (a profile's) default to nothing
            assert op != "-" or default == "", f"{name}: {m.group(0)} has a default"
    assert "synthpipe@" not in text and ":-synthpipe}" not in text


def test_the_first_machine_runs_redis_and_postgres_with_tls_and_passwords() -> None:
    services = _load("docker-compose.yml")["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--port 0 " in redis and "--tls-port 6379" in redis  # no plaintext port at all
    assert "--requirepass ${REDIS_PASSWORD:?" in redis and "--tls-cert-file /run/tls/server.crt" in redis
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert "--tls" in services["redis"]["healthcheck"]["test"]
    pg = " ".join(services["postgres"]["command"])
    assert "ssl=on" in pg and "hba_file=/run/tls/pg_hba.conf" in pg
    hba = services["postgres"]["entrypoint"][2]
    assert "hostssl all all all scram-sha-256" in hba and "host all" not in hba  # TCP only over TLS
    for svc in ("redis", "postgres"):
        assert all(p.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:") for p in services[svc]["ports"]), svc
        assert "./certs:/certs:ro" in services[svc]["volumes"], svc


@pytest.mark.parametrize("name", FILES)
def test_every_synthpipe_service_passes_the_start_up_rule(name: str) -> None:
    """The URLs, filled in from .env.example with passwords set, are accepted by the same
    check the workers run at start-up; with the password left empty compose itself refuses."""
    doc = _load(name)
    env = {**_example_env(), "REDIS_PASSWORD": "0f1e2d3c4b5a", "POSTGRES_PASSWORD": "a5b4c3d2e1f0",
           "FIRST_MACHINE": "gpu-box-1.example", "FLOWER_BASIC_AUTH": "ops:pw"}
    services = {k: v for k, v in doc["services"].items() if str(v.get("image", "")).startswith("synthpipe")}
    assert services
    for svc_name, svc in services.items():
        broker = interpolate(svc["environment"]["SYNTHPIPE_BROKER_URL"], env)
        database = interpolate(svc["environment"]["SYNTHPIPE_DATABASE_URL"], env)
        assert broker.startswith("rediss://:0f1e2d3c4b5a@"), svc_name
        assert security.broker_problem(broker) is None, svc_name
        assert security.database_problem(database, None) is None, svc_name
        assert "sslmode=verify-full&sslrootcert=/certs/ca.crt" in database
        assert svc["environment"]["SYNTHPIPE_CELERY__BROKER_CA_FILE"] == "/certs/ca.crt"
        assert "./certs/ca.crt:/certs/ca.crt:ro" in svc["volumes"], svc_name
        with pytest.raises(LookupError, match="REDIS_PASSWORD"):
            interpolate(svc["environment"]["SYNTHPIPE_BROKER_URL"], {**env, "REDIS_PASSWORD": ""})
        # an empty S3 setting is no setting: compose passes unset variables as ""
        from common.core.settings import StorageSettings
        from common.store.storage import storage_options

        s3 = StorageSettings(**{k.split("__", 1)[1].lower(): interpolate(v, env) for k, v in
                                svc["environment"].items() if k.startswith("SYNTHPIPE_STORAGE__")})
        assert storage_options("s3://synthpipe/objects", s3) == {}


def test_the_worker_file_starts_only_gpu_workers_on_shared_storage() -> None:
    services = _load("docker-compose.worker.yml")["services"]
    parser = build_parser()
    assert set(services) == {"vl-worker", "edit-worker"}
    for name, svc in services.items():
        args = parser.parse_args(svc["command"])
        assert args.command == "worker" and args.gpu == 0, name
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert "depends_on" not in svc and "ports" not in svc, name
        storage = svc["environment"]["SYNTHPIPE_STORAGE_URL"]
        assert storage.startswith("${SYNTHPIPE_STORAGE_URL:?"), "storage must be set: no machine-local default"
    assert _example_env()["SYNTHPIPE_STORAGE_URL"].startswith("s3://")
    cards = {svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0] for svc in services.values()}
    assert len(cards) == len(services)  # one card per model worker


def test_make_certs_covers_the_first_machines_name(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "make-certs.sh"
    subprocess.run([str(script), str(tmp_path / "certs"), "gpu-box-1.example", "10.0.0.5"], check=True,
                   capture_output=True, timeout=60)
    sans = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "certs" / "server.crt"), "-noout", "-ext",
                           "subjectAltName"], capture_output=True, text=True, check=True).stdout
    for name in ("DNS:redis", "DNS:postgres", "DNS:localhost", "IP Address:127.0.0.1", "DNS:gpu-box-1.example",
                 "IP Address:10.0.0.5"):
        assert name in sans, sans
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "certs" / "ca.crt"),
                             str(tmp_path / "certs" / "server.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert oct((tmp_path / "certs" / "ca.key").stat().st_mode & 0o777) == "0o600"
    again = subprocess.run([str(script), str(tmp_path / "certs")], capture_output=True, text=True)
    assert again.returncode == 1 and "already holds certificates" in again.stderr  # never overwritten
