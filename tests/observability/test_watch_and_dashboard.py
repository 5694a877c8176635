"""`status --watch` counts only succeeded and skipped jobs as done and gives every rate in one
unit; the Grafana dashboard imports into any Grafana (its data source is an input, not a uid);
Prometheus sends Flower the basic auth its /metrics now asks for."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"


def test_watch_counts_only_succeeded_and_skipped_as_done_and_rates_in_jobs_per_minute() -> None:
    from common.observability.watch import watch

    frames = iter([
        {"edit": {"queued": 10}},
        {"edit": {"queued": 2, "succeeded": 3, "skipped": 1, "failed": 3, "dead": 1}},
    ])
    out = io.StringIO()
    assert watch(lambda: next(frames), interval=0.05, out=out, frames=2) == 0
    last = out.getvalue().strip().split("\n\n")[-1].splitlines()
    header = last[1].split()
    assert header[-3:] == ["done/min", "avg/min", "left"]  # one unit, named in the header
    assert "jobs/min" in last[0] and "/s" not in " ".join(last)
    row = next(line for line in last if line.startswith("edit ") and "|" not in line).split()
    assert row[1:7] == ["2", "0", "3", "1", "3", "1"]
    done_per_min = float(row[7])
    bar = next(line for line in last if line.startswith("edit ") and "|" in line)
    assert "4/10 done, 4 failed" in bar and " 40%|" in bar  # failed and dead are not done
    assert bar.endswith(f"{done_per_min:.2f} jobs/min")  # the bar's rate: the same number, the same unit
    cells = bar.split("|")[1]
    assert cells.count("#") == int(len(cells) * 0.4) and cells.count("x") == round(len(cells) * 0.4)
    assert done_per_min > 4 * 60  # 4 jobs done in well under a minute: a per-minute figure


def _datasource_refs(node: Any) -> list[dict[str, Any]]:
    """Every ``datasource`` object anywhere in the dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                found.append(value)
            found += _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _datasource_refs(value)
    return found


def test_dashboard_names_its_data_source_as_an_import_input() -> None:
    text = (MON / "grafana" / "dashboards" / "synthpipe.json").read_text()
    dash = json.loads(text)
    provisioned = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert all(d["uid"] not in text for d in provisioned["datasources"])  # no uid of one Grafana's data source
    [wanted] = dash["__inputs"]
    assert wanted["name"] == "DS_PROMETHEUS" and wanted["type"] == "datasource" and wanted["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in dash["panels"]} <= required
    [variable] = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "DS_PROMETHEUS" and variable["query"] == "prometheus" and not variable["current"]
    refs = _datasource_refs(dash)
    assert len(refs) >= 2 * len(dash["panels"])  # every panel and its targets
    assert all(r == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for r in refs), refs
    # what Grafana's import does with the input: the chosen data source's uid in every reference
    imported = json.loads(text.replace("${DS_PROMETHEUS}", "their-prometheus"))
    assert {r["uid"] for r in _datasource_refs(imported)} == {"their-prometheus"}


def test_prometheus_sends_flower_the_basic_auth_compose_hands_it(tmp_path: Path) -> None:
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    [flower] = [j for j in config["scrape_configs"] if j["job_name"] == "flower"]
    auth = flower["basic_auth"]
    prom = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["prometheus"]
    assert prom["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # required, no default
    # run the entrypoint as the container would (compose turns $$ into $), in a scratch folder
    shell, flag, script, name = prom["entrypoint"]
    script = script.replace("$$", "$").replace("/prometheus/", f"{tmp_path}/").replace(
        "exec /bin/prometheus", "exec echo")
    run = subprocess.run([shell, flag, script, name, "--config.file=x"], capture_output=True, text=True,
                         env={"FLOWER_BASIC_AUTH": "ops:s3:cret", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "--config.file=x"  # Prometheus gets its command
    for key, value in (("username_file", "ops"), ("password_file", "s3:cret")):
        written = Path(re.sub(r"^/prometheus/", f"{tmp_path}/", auth[key]))
        assert written.read_text() == value
        assert written.stat().st_mode & 0o077 == 0  # readable by Prometheus alone
