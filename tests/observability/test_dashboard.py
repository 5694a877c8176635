"""The monitoring files: every dashboard query names metrics and labels the code defines, the
dashboard uses the provisioned data source, and Prometheus scrapes what compose serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from common.observability.specs import SPEC_BY_NAME, SPECS, sample_names

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped sample
NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b")
KEYWORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by",
            "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "deriv",
            "topk", "bottomk", "clamp_min", "clamp_max", "abs", "time", "vector", "scalar", "bool"}


def _dashboard() -> dict:  # type: ignore[type-arg]
    return json.loads((MON / "grafana" / "dashboards" / "synthpipe.json").read_text())


def _exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _flower_samples() -> set[str]:
    """What Flower's own /metrics shows: its metric objects, made the way Flower makes them
    (into the default registry, from which they are taken out again)."""
    import prometheus_client
    from flower.events import PrometheusMetrics

    names: set[str] = set()
    made = PrometheusMetrics()
    for metric in vars(made).values():
        for fam in metric.describe():
            names |= {fam.name, *(f"{fam.name}_{s}" for s in ("total", "bucket", "sum", "count"))}
        prometheus_client.REGISTRY.unregister(metric)
    return names


def parse(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """(metric names, [(metric, label names in its matcher)], label names in by/without clauses)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and strings out of the way
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
    matchers = [(m.group(1), set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2))))
                for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", bare)]
    grouping = {lab.strip() for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare) for lab in g.split(",")
                if lab.strip()}
    no_groups = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", bare)
    no_matchers = re.sub(r"\{[^}]*\}", "", no_groups)
    names = {n for n in NAME.findall(no_matchers) if n not in KEYWORDS and not re.fullmatch(r"\d.*", n)
             and not n.startswith("$")}
    return names, matchers, grouping


def test_parse_finds_names_matchers_and_grouping() -> None:
    names, matchers, grouping = parse(
        'sum by (stage, le) (rate(synthpipe_batch_seconds_bucket{stage="vl", job=~"a|b"}[5m])) / up')
    assert names == {"synthpipe_batch_seconds_bucket", "up"}
    assert matchers == [("synthpipe_batch_seconds_bucket", {"stage", "job"})]
    assert grouping == {"stage", "le"}


def test_every_dashboard_query_names_metrics_and_labels_that_exist() -> None:
    known = sample_names() | _flower_samples() | {"up"}
    exprs = _exprs()
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        names, matchers, grouping = parse(expr)
        assert names, expr
        unknown = names - known
        assert not unknown, f"{expr}: no such metric {sorted(unknown)}"
        used |= names
        labels_here: set[str] = set(TARGET_LABELS)
        for name in names:
            family = SPEC_BY_NAME.get(re.sub(r"_(total|bucket|sum|count)$", "", name))
            if family is not None:
                labels_here |= set(family.labels) | ({"le"} if name.endswith("_bucket") else set())
            elif name.startswith("flower_"):
                labels_here |= {"worker", "task", "type"}
        for name, labs in matchers:
            family = SPEC_BY_NAME.get(re.sub(r"_(total|bucket|sum|count)$", "", name))
            if family is not None:
                assert labs <= set(family.labels) | TARGET_LABELS, f"{expr}: {name} has no label {labs}"
        assert grouping <= labels_here, f"{expr}: grouped by labels no metric has: {grouping - labels_here}"
    # the panels the dashboard promises: throughput, queue depth, failures by reason, latency, GPU
    for family in ("synthpipe_jobs_finished", "synthpipe_queue_length", "synthpipe_jobs_by_reason",
                   "synthpipe_batch_seconds", "synthpipe_model_call_seconds", "synthpipe_gpu_utilization_ratio",
                   "synthpipe_gpu_memory_used_bytes"):
        assert used & set(SPEC_BY_NAME[family].samples()), f"no panel shows {family}"


def test_a_misspelt_metric_would_be_caught() -> None:
    names, _, _ = parse("sum by (stage) (rate(synthpipe_jobs_finishd_total[5m]))")
    assert names - sample_names() == {"synthpipe_jobs_finishd_total"}


def test_dashboard_uses_the_provisioned_data_source_and_provider_path() -> None:
    sources = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # panels name the data source through the DS_PROMETHEUS variable, which picks the default
    # Prometheus data source: the provisioned one here, the one chosen on import elsewhere
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]
    assert [(d["type"], d["isDefault"]) for d in sources["datasources"]] == [("prometheus", True)]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    provider = yaml.safe_load((MON / "grafana" / "provisioning" / "dashboards" / "synthpipe.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./monitoring/grafana/dashboards:{path}:ro" in compose["grafana"]["volumes"]
    assert sources["datasources"][0]["url"].startswith("http://prometheus:")


def test_prometheus_scrapes_what_compose_serves() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    workers = {name for name, svc in compose.items() if svc.get("command", [None])[0] == "worker"}
    assert workers, "compose defines no worker"
    scraped_hosts = set()
    for target in targets:
        host, port = target.rsplit(":", 1)
        svc = compose[host]  # a compose service of that name
        scraped_hosts.add(host)
        cmd = svc["command"]
        if cmd[0] == "worker":
            assert cmd[cmd.index("--metrics-port") + 1] == port, target
        elif cmd[0] in ("metrics", "flower"):
            assert cmd[cmd.index("--port") + 1] == port, target
        assert "monitoring" in compose["prometheus"]["profiles"]
    assert workers | {"metrics", "flower"} <= scraped_hosts
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in compose[name]["ports"]), name
    assert {s.where for s in SPECS} == {"worker", "store", "gpu"}
