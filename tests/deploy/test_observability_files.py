"""deploy/observability/ is valid without a network: every file parses, alert
rules and dashboard queries only read metrics and labels Strata exports, data
source uids resolve, and the Compose file mounts files that exist. With promtool
on PATH (Debian: `apt-get install prometheus`) the Prometheus files are also
checked and the alert rules unit-tested by Prometheus itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql_lint import (
    METRICS,
    logql_problems,
    metrics_used,
    promql_problems,
)

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
PROM = OBS / "prometheus"
COMPOSE = OBS / "docker-compose.observability.yml"
DASHBOARD = OBS / "grafana" / "dashboards" / "strata.json"
DATASOURCES = OBS / "grafana" / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS = OBS / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
PROMTAIL = OBS / "promtail" / "promtail.yml"
LOKI = OBS / "loki" / "loki.yml"
METRICS_SRC = ROOT / "src" / "strata" / "observability" / "metrics.py"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def prom_targets() -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in dashboard_panels()
        for t in p.get("targets", [])
        if t["datasource"]["type"] == "prometheus"
    ]


def datasource_uids() -> dict[str, str]:
    return {d["uid"]: d["type"] for d in load(DATASOURCES)["datasources"]}


def compose_services() -> dict[str, Any]:
    return load(COMPOSE)["services"]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        if source.startswith((".", "/", "$")):
            out.append((source, target))
    return out


def test_every_file_parses() -> None:
    files = sorted(p for p in OBS.rglob("*") if p.is_file())
    assert {p.suffix for p in files} <= {".yml", ".json", ".md"}, files
    parsed = 0
    for path in files:
        if path.suffix == ".yml":
            assert load(path) is not None, path
            parsed += 1
        elif path.suffix == ".json":
            json.loads(path.read_text())
            parsed += 1
    assert parsed >= 10


# Prometheus


def test_prometheus_scrapes_strata_and_loads_the_rules() -> None:
    config = load(PROM / "prometheus.yml")
    for pattern in config["rule_files"]:
        assert list(PROM.glob(pattern)), f"rule file {pattern} missing"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "strata"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [
        target
        for sd in job["file_sd_configs"]
        for pattern in sd["files"]
        for path in PROM.glob(pattern)
        for group in load(path)
        for target in group["targets"]
    ]
    assert targets == ["strata:8000"]
    assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)


REQUIRED_ALERTS = {
    "StrataDown": {"up"},
    "StrataHighErrorRate": {"strata_requests_total"},
    "StrataHighLatencyP95": {"gen_ai_client_operation_duration_seconds"},
    "StrataHighTimeToFirstTokenP95": {"gen_ai_server_time_to_first_token_seconds"},
    "StrataCostPerHourHigh": {"strata_cost_usd_total"},
    "StrataCircuitOpen": {"strata_circuit_breaker_state"},
    "StrataUsageWriteFailures": {"strata_usage_write_failures_total"},
    "StrataLimitRejectionsSpike": {"strata_limit_rejections_total"},
}


def test_alert_rules_have_what_an_operator_needs() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
    by_name = {r["alert"]: r for r in rules}
    for name, metrics in REQUIRED_ALERTS.items():
        assert name in by_name, f"missing alert {name}"
        assert metrics_used(by_name[name]["expr"]) == metrics, name
    assert "histogram_quantile(0.95" in by_name["StrataHighLatencyP95"]["expr"]
    assert "* 3600" in by_name["StrataCostPerHourHigh"]["expr"]
    assert "== 2" in by_name["StrataCircuitOpen"]["expr"]
    assert by_name["StrataCircuitOpen"]["for"] == "1m"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_expressions_read_known_metrics(rule: dict[str, Any]) -> None:
    assert promql_problems(rule["expr"]) == []
    # Annotations may only use labels the expression keeps (or target labels).
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in rule["expr"] or label in {"instance", "job"}, (rule["alert"], label)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(strata_request_total[5m]))", "unknown metric 'strata_request_total'"),
        ("rate(strata_requests_total[5m]", "unclosed '('"),
        ("sum(rate(strata_requests_total[5m])))", "unbalanced ')'"),
        ("rate(gen_ai_client_token_usage[5m])", "histogram 'gen_ai_client_token_usage' needs"),
        ("sum by (alais) (rate(strata_requests_total[5m]))", "label 'alais' is on none"),
        ('strata_cost_usd_total{status="ok"}', "strata_cost_usd_total has no label 'status'"),
        ("ratee(strata_requests_total[5m])", "unknown function 'ratee'"),
        ("rate(strata_requests_total[5x])", "bad range [5x]"),
        ("rate(strata_requests_total[$alias])", "unknown variable"),
        ("3600", "no metric used"),
    ],
)
def test_the_query_check_catches_mistakes(expr: str, problem: str) -> None:
    problems = promql_problems(expr)
    assert any(problem in p for p in problems), problems


def test_the_query_check_accepts_grafana_and_promql_forms() -> None:
    ttft = "gen_ai_server_time_to_first_token_seconds_bucket"
    for expr in [
        f'histogram_quantile(0.99, sum by (le) (rate({ttft}{{gen_ai_request_model=~"$alias"}}'
        "[$__rate_interval])))",
        'sum(increase(strata_cost_usd_total{alias=~"a|b"}[$__range])) * 1e2',
        "sum by (component) (rate(strata_db_errors_total[1h:5m]))",
        'up{job="strata"} == 0 and on (instance) strata_usage_buffer_records > 0',
    ]:
        assert promql_problems(expr) == [], expr


# Grafana


def test_datasources_have_fixed_uids_and_links_that_resolve() -> None:
    sources = load(DATASOURCES)["datasources"]
    uids = datasource_uids()
    assert len(uids) == len(sources)
    assert set(uids.values()) == {"prometheus", "loki", "jaeger"}
    assert sum(bool(s.get("isDefault")) for s in sources) == 1
    services = compose_services()
    for s in sources:
        m = re.fullmatch(r"http://([\w-]+):(\d+)", s["url"])
        assert m, s["url"]
        host, port = m.groups()
        assert host in services, s["name"]
        published = {p.split(":")[-1].split()[0] for p in services[host].get("ports", [])}
        assert port in published or host == "prometheus", s["name"]
        data = s.get("jsonData", {})
        for field in data.get("derivedFields", []):
            assert field["datasourceUid"] in uids
        if "tracesToLogsV2" in data:
            assert data["tracesToLogsV2"]["datasourceUid"] in uids


def test_dashboard_is_a_grafana_model_provisioned_by_file() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and "id" not in dash
    assert 36 <= dash["schemaVersion"] <= 41
    (provider,) = load(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    grafana = compose_services()["grafana"]
    mounted = {target: source for source, target in bind_mounts(grafana)}
    source = mounted[provider["options"]["path"]]
    assert (OBS / source / DASHBOARD.name).exists()
    assert (OBS / mounted["/etc/grafana/provisioning"] / "datasources" / DATASOURCES.name).exists()


def test_dashboard_panels_are_laid_out_and_use_provisioned_datasources() -> None:
    dash = json.loads(DASHBOARD.read_text())
    uids = datasource_uids()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in uids, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert uids[t["datasource"]["uid"]] == t["datasource"]["type"], p["title"]
            assert t["expr"].strip() and t["refId"], p["title"]
    for var in dash["templating"]["list"]:
        if "datasource" in var:
            assert var["datasource"]["uid"] in uids
        assert promql_problems(var["definition"].removeprefix("label_values(").split(",")[0]) == []


@pytest.mark.parametrize(("title", "expr"), prom_targets())
def test_dashboard_queries_read_known_metrics(title: str, expr: str) -> None:
    assert promql_problems(expr) == []


def test_dashboard_covers_the_operators_questions() -> None:
    used = set().union(*(metrics_used(e) for _, e in prom_targets()))
    missing = set(METRICS) - used
    assert not missing, f"metrics on no panel: {sorted(missing)}"
    titles = " ".join(p["title"].lower() for p in dashboard_panels())
    for word in ["requests/s", "p95", "first token", "tokens/s", "cost per hour", "24h",
                 "cache hit rate", "saved", "rejections", "by provider", "circuit",
                 "in flight", "queue", "usage buffer"]:  # fmt: skip
        assert word in titles, word


# Logs


def promtail_stream_labels() -> set[str]:
    labels = set()
    for job in load(PROMTAIL)["scrape_configs"]:
        for stage in job["pipeline_stages"]:
            labels |= set(stage.get("labels") or ())
        for rc in job.get("relabel_configs", []):
            labels.add(rc["target_label"])
        for sc in job.get("static_configs", []):
            labels |= {k for k in sc["labels"] if not k.startswith("__")}
    return labels


def test_promtail_parses_the_json_logs_with_bounded_labels() -> None:
    config = load(PROMTAIL)
    (client,) = config["clients"]
    assert re.fullmatch(r"http://loki:3100/loki/api/v1/push", client["url"])
    jobs = config["scrape_configs"]
    assert {"docker_sd_configs", "static_configs"} <= {k for j in jobs for k in j}
    for job in jobs:
        stages = {k: v for stage in job["pipeline_stages"] for k, v in stage.items()}
        fields = set(stages["json"]["expressions"])
        assert fields >= {"level", "request_id", "trace_id", "tenant", "alias", "status"}
        assert set(stages["labels"]) == {"level", "alias", "status"}, job["job_name"]
        assert set(stages["structured_metadata"]) == {"request_id", "trace_id", "tenant"}
        assert stages["timestamp"]["source"] in fields
    assert not promtail_stream_labels() & {"request_id", "trace_id", "tenant"}
    loki = load(LOKI)
    assert loki["limits_config"]["allow_structured_metadata"] is True
    (schema,) = loki["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == (
        "tsdb",
        "v13",
        "filesystem",
    )
    assert "filesystem" in loki["common"]["storage"]


def test_log_panels_query_labels_promtail_attaches() -> None:
    labels = promtail_stream_labels()
    logs = [
        t["expr"]
        for p in dashboard_panels()
        for t in p.get("targets", [])
        if t["datasource"]["type"] == "loki"
    ]
    assert logs
    query = load(DATASOURCES)["datasources"][2]["jsonData"]["tracesToLogsV2"]["query"]
    for expr in [*logs, query]:
        assert logql_problems(expr, labels) == [], expr
    assert logql_problems('{request_id="x"}', labels) == ["no stream label 'request_id'"]


# Compose


def test_compose_images_are_pinned_and_mounts_exist() -> None:
    services = compose_services()
    assert set(services) == {"prometheus", "grafana", "loki", "promtail", "jaeger"}
    for name, service in services.items():
        image, _, tag = service["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin {service['image']}"
        for source, _target in bind_mounts(service):
            if source.startswith("./"):
                assert (OBS / source).exists(), f"{name} mounts missing {source}"
        mounted = [t for _, t in bind_mounts(service)]
        for arg in service.get("command", []):
            m = re.match(r"-{1,2}config\.file=(.+)", arg)
            if m:
                assert m.group(1) in mounted, f"{name}: {m.group(1)} not mounted"
    assert "/etc/prometheus/targets" in [t for _, t in bind_mounts(services["prometheus"])]
    for rule_file in load(PROM / "prometheus.yml")["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in [t for _, t in bind_mounts(services["prometheus"])]
    assert "4318:4318" in services["jaeger"]["ports"]
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]
    assert "# strata:" in COMPOSE.read_text()


# The names here against the metrics module, once it exists.


def test_metric_names_match_the_metrics_module() -> None:
    if not METRICS_SRC.exists():
        pytest.skip("src/strata/observability/metrics.py not written yet")
    source = METRICS_SRC.read_text()
    for name in METRICS:
        if name == "up":
            continue
        base = name.removesuffix("_total") if name != "strata_tokens_total" else name
        assert f'"{name}"' in source or f'"{base}"' in source, f"{name} not in metrics.py"


# promtool, where installed


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: list[str]) -> None:
    run = subprocess.run(
        [PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
