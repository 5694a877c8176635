"""The deployment files: docker-compose.yml and the Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_service_wired() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "migrate", "flower", "scrape-worker", "vl-worker", "edit-worker"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["migrate"]["command"] == ["db", "upgrade"] and services["migrate"]["restart"] == "no"
    from common.core import stages

    workers = {f"{stage}-worker" for stage in stages.names()}
    assert workers <= set(services), f"no compose worker for {workers - set(services)}"  # every queue is served
    for stage in stages.names():
        command = services[f"{stage}-worker"]["command"]
        assert command[:2] == ["worker", stage], stage
    for name in ("flower", *sorted(workers)):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        env = services[name]["environment"]
        assert env["SYNTHPIPE_BROKER_URL"].startswith("rediss://") and "@redis:" in env["SYNTHPIPE_BROKER_URL"]
        assert env["SYNTHPIPE_DATABASE_URL"].startswith("postgresql")
    for name in ("vl-worker", "edit-worker", "score-worker", "train-worker", "generate-worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    assert "SYNTHPIPE_FLOWER__BASIC_AUTH" in services["flower"]["environment"]
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])


def test_compose_commands_are_valid_synthpipe_commands() -> None:
    parser = build_parser()
    for name, svc in _compose()["services"].items():
        if svc.get("image", "").startswith("synthpipe"):
            args = parser.parse_args(svc["command"])  # exits (fails the test) on a bad command
            assert args.func is not None, name


def test_dockerfile_copies_existing_paths() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for part in line.split()[:-1]:  # the last word is the destination
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    assert 'ENTRYPOINT ["synthpipe"]' in text


def test_settings_reference_is_generated_from_the_current_settings() -> None:
    from common.core.settings_doc import settings_reference

    current = (Path(__file__).resolve().parents[2] / "docs" / "SETTINGS.md").read_text()
    assert current == settings_reference(), "run: python -m common.core.settings_doc > docs/SETTINGS.md"
