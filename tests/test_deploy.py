"""deploy/: every file a production install uses, checked by the tool that would consume it.

hadolint lints the Dockerfile, docker-compose parses the compose file, kubectl's kustomize
renders the manifests and kubernetes-validate checks them against the API schemas, promtool
checks and unit-tests the alerts, and the dashboard's queries are matched against what a
running relay exports. All offline: the tools come as wheels (and promtool from Debian).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from relay.config import Settings
from tests.fixtures import ClientFactory

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OBSERVABILITY = DEPLOY / "observability"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
# The attempt's own timeout plus the slack the worker gives a job (relay.worker).
JOB_SLACK_SECONDS = 5


def _tool(name: str) -> str:
    """A checker from the venv (wheels) or PATH (promtool, from Debian)."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed (make test installs it)"
    return found


def _run(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert match and duration, duration
    return int(match[1] or 0) * 60 + float(match[2] or 0)


# --- the image ---------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_and_builds_a_slim_non_root_image_from_the_wheel() -> None:
    hadolint = _tool("hadolint")
    print(_run(hadolint, "deploy/Dockerfile").stdout)
    # The linter is live: a careless Dockerfile fails it.
    sloppy = subprocess.run(
        [hadolint, "-"],
        input="FROM python:latest\nRUN apt-get update && apt-get install -y curl\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sloppy.returncode != 0 and "DL3007" in sloppy.stdout

    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all("slim" in s or s.startswith("${") for s in stages)
    assert "--wheel" in text and "--no-index" in text  # the runtime installs only the wheels
    assert "--constraint requirements.lock" in text  # of the releases the tests ran with
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0].isdigit() and not user.startswith("0")
    for label in ("title", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}" in text
    assert '"relay"' in re.findall(r"^ENTRYPOINT (.+)", text, re.M)[0]

    # Only what the wheel is built from is sent to the builder.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:5] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!relay/",
        "!requirements.lock",
    ]


# --- compose -----------------------------------------------------------------------------


@pytest.fixture
def compose(tmp_path: Path) -> dict[str, Any]:
    """deploy/compose.yaml as docker-compose resolves it, with relay.env from the example."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    shutil.copy(copy / "relay.env.example", copy / "relay.env")
    result = _run(
        _tool("docker-compose"),
        "-f",
        "compose.yaml",
        "--profile",
        "observability",
        "config",
        "--format",
        "json",
        cwd=copy,
    )
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def test_compose_runs_redis_postgres_migrate_two_apis_two_workers_and_observability(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    env = _env_file(DEPLOY / "relay.env.example")
    assert {"redis", "postgres", "migrate", "api", "worker", "lb"} <= services.keys()
    assert {"prometheus", "grafana"} <= services.keys()

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    conf = (DEPLOY / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)

    timeout = float(env["RELAY_DELIVERY_TIMEOUT"])
    for name in ("api", "worker"):
        service = services[name]
        assert service["deploy"]["replicas"] == 2
        assert service["read_only"] is True and not service["user"].startswith("0")
        assert {"RELAY_REDIS_URL", "RELAY_DATABASE_URL", "RELAY_SECRET_KEYS"} <= service[
            "environment"
        ].keys()
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # api and worker refuse an unknown schema: they start once migrate has applied it.
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert _seconds(service["stop_grace_period"]) > timeout
    assert _seconds(services["worker"]["stop_grace_period"]) > timeout + JOB_SLACK_SECONDS
    assert services["api"]["command"][0] == "api" and services["worker"]["command"] == ["worker"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # The workers' liveness: their /healthz, on the port they are told to serve it.
    worker = services["worker"]
    port = worker["environment"]["RELAY_WORKER_HEALTH_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert "8000" in {str(p["target"]) for p in services["lb"]["ports"]}

    # Secrets reach the containers from the env file only, never from the compose file.
    secrets = ("RELAY_SECRET_KEYS", "RELAY_ADMIN_TOKEN", "RELAY_REDIS_URL", "RELAY_DATABASE_URL")
    for secret in (*secrets, "POSTGRES_PASSWORD"):
        assert secret in env and secret not in (DEPLOY / "compose.yaml").read_text()
    assert "deploy/relay.env" in (ROOT / ".gitignore").read_text().split()

    postgres = services["postgres"]
    assert int(postgres["image"].split(":")[1].split("-")[0]) >= 16
    assert any(
        v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume"
        for v in postgres["volumes"]
    )
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "POSTGRES_PASSWORD" in postgres["environment"]
    # The URL relay is given names the user and database the postgres service creates.
    url = urlsplit(env["RELAY_DATABASE_URL"])
    assert url.scheme == "postgresql" and url.hostname == "postgres"
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.password == env["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]

    # migrate runs once per `up`, after PostgreSQL answers, and must not be restarted.
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["image"] == services["api"]["image"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "RELAY_DATABASE_URL" in migrate["environment"]
    assert migrate["restart"] == "no" and "deploy" not in migrate
    assert migrate["read_only"] is True and not migrate["user"].startswith("0")

    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            if volume["type"] == "bind":  # a file or folder of deploy/ (copied to tmp_path)
                assert Path(volume["source"]).exists(), volume["source"]


# --- Kubernetes --------------------------------------------------------------------------


def _kustomize(path: Path) -> list[dict[str, Any]]:
    rendered = _run(_tool("kubectl"), "kustomize", str(path)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


# Kinds of the Prometheus Operator, which the API schemas do not know.
OPERATOR_KINDS = {"ServiceMonitor"}


@pytest.mark.parametrize(
    ("tree", "extra"), [("base", []), ("overlays/example", ["ServiceMonitor"])]
)
def test_kubernetes_manifests_render_and_validate_against_the_api_schemas(
    tree: str, extra: list[str]
) -> None:
    docs = _kustomize(K8S / tree)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Deployment", "Job", "Service", "HorizontalPodAutoscaler"]
        + ["PodDisruptionBudget"] * 2
        + ["NetworkPolicy"] * 7
        + extra
    )
    for doc in docs:
        if doc["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    # The validator is live: a misspelt field is refused.
    broken = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_kubernetes_deployments_are_locked_down_probed_and_configured() -> None:
    docs = _kustomize(K8S / "overlays" / "example")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    config = by_kind["ConfigMap"][0]["data"]
    timeout = float(config["RELAY_DELIVERY_TIMEOUT"])
    every_variable = {f"RELAY_{name.upper()}" for name in Settings.model_fields}
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == {"relay-api", "relay-worker"}
    assert all(d["metadata"]["namespace"] == "relay" for d in docs)

    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] > timeout + JOB_SLACK_SECONDS
        assert pod["initContainers"][0]["args"] == ["config", "check"]
        for container in pod["initContainers"] + pod["containers"]:
            assert container["image"] == "registry.example.com/relay:0.1.0"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]["cpu"], name
            # Every RELAY_* variable reaches every container: from the ConfigMap or the Secret.
            from_secret = {
                e["name"]
                for e in container["env"]
                if e["valueFrom"]["secretKeyRef"]["name"] == "relay-secrets"
            }
            assert container["envFrom"] == [{"configMapRef": {"name": "relay-config"}}]
            assert every_variable <= set(config) | from_secret, name
            assert not from_secret & set(config)  # no secret in the ConfigMap

    api = deployments["relay-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The worker's liveness is asked on the port the ConfigMap tells it to serve.
    worker = deployments["relay-worker"]["spec"]["template"]["spec"]["containers"][0]
    probe = worker["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == int(config["RELAY_WORKER_HEALTH_PORT"])
    assert "readinessProbe" not in worker  # workers take no traffic
    api_labels = deployments["relay-api"]["spec"]["template"]["metadata"]["labels"]
    service = by_kind["Service"][0]
    assert service["spec"]["selector"].items() <= api_labels.items()
    hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "relay-api" and hpa["minReplicas"] >= 2
    for pdb in by_kind["PodDisruptionBudget"]:
        selected = pdb["spec"]["selector"]["matchLabels"].items()
        assert any(
            selected <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        )
    # Redis and PostgreSQL are external URLs, never deployed by these manifests.
    assert not any(s in d["metadata"]["name"] for d in docs for s in ("redis", "postgres"))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in config


def _secret_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables from relay-secrets, by the key each is read from."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "relay-secrets"
    }


def _allows_egress(policy: dict[str, Any], port: int) -> bool:
    return policy["spec"]["policyTypes"] == ["Egress"] and any(
        {"protocol": "TCP", "port": port} in rule.get("ports", [])
        for rule in policy["spec"]["egress"]
    )


def test_kubernetes_migrates_the_schema_in_a_job_and_lets_relay_reach_postgres() -> None:
    docs = _kustomize(K8S / "overlays" / "example")
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == ["relay-migrate"]
    job = jobs[0]
    # Argo CD runs it before the Deployments and replaces it on the next sync.
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/relay:0.1.0"
    assert container["args"] == ["migrate"]
    assert _secret_env(container)["RELAY_DATABASE_URL"] == "RELAY_DATABASE_URL"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # api, worker and migrate get egress to PostgreSQL's port, as they do to Redis's.
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"Deployment", "Job"}
    }
    assert set(pods) == {"relay-api", "relay-worker", "relay-migrate"}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for name, labels in pods.items():
        selecting = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert any(_allows_egress(p, 5432) for p in selecting), name
        assert any(_allows_egress(p, 6379) for p in selecting), name
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert _secret_env(container)["RELAY_DATABASE_URL"] == "RELAY_DATABASE_URL"


def _selects(policy: dict[str, Any], labels: dict[str, str], kind: str) -> bool:
    return kind in policy["spec"]["policyTypes"] and (
        policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    )


def _peer_matches(peer: dict[str, Any], ip: str | None, namespace: str | None) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return ip is not None and (
            ipaddress.ip_address(ip) in ipaddress.ip_network(block["cidr"])
            and not any(
                ipaddress.ip_address(ip) in ipaddress.ip_network(c) for c in block.get("except", [])
            )
        )
    wanted = peer["namespaceSelector"]["matchLabels"]
    return wanted == {"kubernetes.io/metadata.name": namespace}


def _allowed(
    policies: list[dict[str, Any]],
    labels: dict[str, str],
    port: int,
    *,
    kind: str = "Egress",
    ip: str | None = None,
    namespace: str | None = None,
) -> bool:
    """Whether the policies let a pod with `labels` reach (Egress) or be reached from
    (Ingress) `ip` or a pod of `namespace` on TCP `port`, as Kubernetes adds policies up."""
    key, peers = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    return any(
        {"protocol": "TCP", "port": port} in rule["ports"]
        and any(_peer_matches(peer, ip, namespace) for peer in rule[peers])
        for policy in policies
        if _selects(policy, labels, kind)
        for rule in policy["spec"][key]
    )


def test_kubernetes_network_policies_let_every_path_the_example_needs_through_and_no_other() -> (
    None
):
    docs = _kustomize(K8S / "overlays" / "example")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"Deployment", "Job"}
    }
    api, worker = pods["relay-api"], pods["relay-worker"]
    for labels in pods.values():
        # Redis and PostgreSQL in the VPC's own range (AWS's default VPC is 172.31.0.0/16).
        assert _allowed(policies, labels, 6379, ip="172.31.7.20")
        assert _allowed(policies, labels, 5432, ip="172.31.7.21")
        assert _allowed(policies, labels, 53, namespace="kube-system") or _allowed(
            policies, labels, 53, ip="172.31.0.2"
        )
    for labels in (api, worker):
        # Receivers on the internet, on their usual ports and on 8443.
        for port in (443, 80, 8443):
            assert _allowed(policies, labels, port, ip="93.184.216.34"), port
        # Never a receiver on a private address, nor the cloud's metadata service.
        assert not _allowed(policies, labels, 443, ip="172.31.7.20")
        assert not _allowed(policies, labels, 80, ip="169.254.169.254")
        assert not _allowed(policies, labels, 6379, ip="93.184.216.34")
        # Traces reach the collector the ConfigMap names, in its namespace.
        otlp = urlsplit(config["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.hostname and otlp.port
        collector_namespace = otlp.hostname.split(".")[1]
        assert _allowed(policies, labels, otlp.port, namespace=collector_namespace)
        assert not _allowed(policies, labels, otlp.port, namespace="default")

    # Events come in through the ingress controller and from the publishing namespace inside
    # the cluster; Prometheus scrapes from monitoring; nothing else reaches the API.
    port = 8000
    for namespace in ("ingress-nginx", "publishing", "monitoring"):
        assert _allowed(policies, api, port, kind="Ingress", namespace=namespace), namespace
    assert not _allowed(policies, api, port, kind="Ingress", namespace="default")
    assert not any(
        _allowed(policies, worker, p, kind="Ingress", namespace=n)
        for p in (8000, 8001)
        for n in ("ingress-nginx", "monitoring", "publishing")
    )


def test_kubernetes_prometheus_operator_scrapes_every_api_pod_as_the_relay_job() -> None:
    docs = _kustomize(K8S / "overlays" / "example")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = next(d for d in docs if d["kind"] == "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The alerts name job="relay".
    assert {"targetLabel": "job", "replacement": "relay"} in endpoint["relabelings"]
    alerts = (OBSERVABILITY / "alerts.yml").read_text()
    assert 'up{job="relay"}' in alerts


# --- alerts and dashboard ----------------------------------------------------------------

REQUIRED_ALERTS = {
    "RelayBacklogGrowing",
    "RelayBacklogLarge",
    "RelayDeliveriesLate",
    "RelayDeliveriesFailed",
    "RelayWebhooksAutoDisabled",
    "RelayRedisMemoryHigh",
    "RelayWorkersFewer",
    "RelayDeliverySuccessLow",
    "RelayWorkersAbsent",
    "RelayRedisUnreachable",
    "RelaySweeperRequeuing",
    "RelayHistoryBehind",
    "RelayHistoryWriteErrors",
    "RelayPostgresUnreachable",
}
# What the workers' history writer exports about moving finished records to PostgreSQL.
HISTORY_METRICS = {
    "relay_history_backlog",
    "relay_history_held",
    "relay_history_lag_seconds",
    "relay_history_write_errors_total",
    "relay_postgres_up",
}


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_and_each_alert_has_a_unit_test_and_a_runbook() -> None:
    promtool = _tool("promtool")
    print(_run(promtool, "check", "rules", "alerts.yml", cwd=OBSERVABILITY).stdout)
    print(_run(promtool, "test", "rules", "alerts.test.yml", cwd=OBSERVABILITY).stdout)

    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= REQUIRED_ALERTS
    unit_tests = yaml.safe_load((OBSERVABILITY / "alerts.test.yml").read_text())["tests"]
    tested = {
        case["alertname"]
        for test in unit_tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    for alert in alerts:
        assert alert["alert"] in tested, f"{alert['alert']} never shown firing"
        assert len(alert["annotations"]["runbook"]) > 150, alert["alert"]
        assert alert["annotations"]["summary"] and alert["labels"]["severity"]

    # The history writer is watched on each thing that can go wrong with it.
    by_name = {a["alert"]: a for a in alerts}
    assert "relay_history_lag_seconds" in by_name["RelayHistoryBehind"]["expr"]
    assert "relay_history_backlog" in by_name["RelayHistoryBehind"]["annotations"]["summary"]
    assert "relay_history_write_errors_total" in by_name["RelayHistoryWriteErrors"]["expr"]
    assert "relay_postgres_up" in by_name["RelayPostgresUnreachable"]["expr"]
    assert by_name["RelayPostgresUnreachable"]["labels"]["severity"] == "critical"


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """An alert that never fires fails its test: promtool's verdict is not a formality."""
    shutil.copy(OBSERVABILITY / "alerts.test.yml", tmp_path)
    rules = (OBSERVABILITY / "alerts.yml").read_text()
    broken = rules.replace("max(relay_workers) < 1", "max(relay_workers) < 0")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    result = _run(_tool("promtool"), "test", "rules", "alerts.test.yml", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "RelayWorkersAbsent" in result.stdout + result.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "relay.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _exported(scrape: str) -> set[str]:
    """Every series name a /metrics page can carry, from its # TYPE lines."""
    names = set()
    for kind_name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M):
        names.add(kind_name)
        if kind == "histogram":
            names |= {kind_name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


async def test_dashboard_and_alerts_query_only_metrics_relay_exports(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await make_client()
    scrape = (await client.get("/metrics")).text
    exported = _exported(scrape)
    queries = _dashboard_queries()
    # Expressions, and the summaries and runbooks that name metrics for on-call to look at.
    rules = [text for rule in _alerts() for text in (rule["expr"], *rule["annotations"].values())]
    used = {name for q in queries + rules for name in re.findall(r"\brelay_[a-z_]+\b", q)}
    assert used and used <= exported, used - exported
    # The dashboard shows what an operator needs: ingest, outcomes, latency, backlog,
    # webhooks, Redis, and the history written to PostgreSQL.
    for needed in (
        "relay_events_accepted_total",
        "relay_attempts_total",
        "relay_deliveries_finished_total",
        "relay_attempt_duration_seconds_bucket",
        "relay_deliveries_due",
        "relay_webhooks_disabled",
        "relay_redis_errors_total",
        "relay_workers",
    ):
        assert needed in used, needed
    on_dashboard = {name for q in queries for name in re.findall(r"\brelay_[a-z_]+\b", q)}
    assert on_dashboard >= HISTORY_METRICS, HISTORY_METRICS - on_dashboard

    # Every query is valid PromQL: promtool parses them as recording rules.
    recorded = [{"record": f"dashboard:query_{n}", "expr": q} for n, q in enumerate(queries)]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]})
    )
    _run(_tool("promtool"), "check", "rules", str(tmp_path / "queries.yml"))


def test_grafana_is_provisioned_with_the_dashboard_and_its_data_source() -> None:
    provisioning = OBSERVABILITY / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    assert source["datasources"][0]["isDefault"] is True
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "relay.json").read_text())
    # No data source's uid is written in: a variable offers every Prometheus one (the
    # provisioned default first), so the dashboard imports into any Grafana.
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    chosen = f"${{{variable['name']}}}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == chosen, panel["title"]
        assert {t["datasource"]["uid"] for t in panel["targets"]} == {chosen}, panel["title"]
    provider = yaml.safe_load((provisioning / "dashboards" / "relay.yml").read_text())
    compose = (DEPLOY / "compose.yaml").read_text()
    assert f"dashboards:{provider['providers'][0]['options']['path']}:ro" in compose
    prometheus = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["api:8000"]


# Labels each metric the dashboard reads is exported with (histograms: besides `le`).
_LABELS = {
    "relay_events_accepted_total": [{"type": "post.published"}, {"type": "media.uploaded"}],
    "relay_attempts_total": [{"status": "2xx"}, {"status": "5xx"}, {"status": "error"}],
    "relay_deliveries_finished_total": [{"status": "delivered"}, {"status": "failed"}],
    "relay_http_requests_total": [
        {"method": "POST", "route": "/v1/events", "status": "202"},
        {"method": "GET", "route": "/v1/webhooks/{id}", "status": "404"},
    ],
    "relay_http_request_duration_seconds": [
        {"method": "POST", "route": "/v1/events"},
        {"method": "GET", "route": "/v1/webhooks/{id}"},
    ],
}


def _input_series(name: str, instance: str) -> list[dict[str, str]]:
    """A minute-by-minute history of `name` as one API replica reports it."""
    histogram = name.endswith(("_bucket", "_sum", "_count"))
    base = re.sub(r"_(bucket|sum|count)$", "", name) if histogram else name
    series = []
    for n, labels in enumerate(_LABELS.get(base, [{}])):
        steps = (
            [(le, i + 1) for i, le in enumerate(("0.1", "1.0", "+Inf"))]
            if name.endswith("_bucket")
            else [(None, 1)]
        )
        for le, share in steps:
            pairs = {**labels, "instance": instance} | ({"le": le} if le else {})
            text = ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items()))
            counter = histogram or name.endswith("_total")
            values = f"0+{(n + 1) * share * 60}x30" if counter else f"{(n + 1) * 3}x30"
            series.append({"series": f"{name}{{{text}}}", "values": values})
    return series


def test_dashboard_queries_read_the_same_whether_one_replica_or_every_one_is_scraped(
    tmp_path: Path,
) -> None:
    """Each API replica reports the same figures (they live in Redis): scraping every pod (a
    ServiceMonitor) rather than one (through the Service) must change no panel. promtool
    evaluates every query over two replicas' identical series and over one replica's."""
    queries = _dashboard_queries()
    names = sorted({n for q in queries for n in re.findall(r"\brelay_[a-z_]+\b", q)})

    def one_replica(query: str) -> str:
        # The same query, every selector narrowed to the first replica.
        narrowed = re.sub(r"\b(relay_[a-z_]+)\{", r'\1{instance="a",', query)
        return re.sub(r"\b(relay_[a-z_]+)\b(?![{_a-z])", r'\1{instance="a"}', narrowed)

    rules = []
    for n, query in enumerate(queries):
        rules.append({"record": f"every:query_{n}", "expr": query})
        rules.append({"record": f"one:query_{n}", "expr": one_replica(query)})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    # The same series, the same label sets, the same values: count and total agree.
    same = [
        {
            "expr": f"count(every:query_{n}) - count(one:query_{n}) "
            f"+ on() (sum(every:query_{n}) - sum(one:query_{n}))",
            "eval_time": "20m",
            "exp_samples": [{"labels": "{}", "value": 0}],
        }
        for n in range(len(queries))
    ]
    series = [s for name in names for i in ("a", "b") for s in _input_series(name, i)]
    test = {
        "rule_files": ["queries.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": same}],
    }
    (tmp_path / "queries.test.yml").write_text(yaml.safe_dump(test))
    _run(_tool("promtool"), "test", "rules", "queries.test.yml", cwd=tmp_path)
