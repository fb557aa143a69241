"""Static checks of docker/: compose file, Dockerfile, Prometheus config and alerts, Grafana dashboard.

No Docker engine is needed. promtool checks run when promtool is on PATH
(.ci/install_promtool.sh installs it) and are skipped otherwise.
"""
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from worker.http.metrics import HTTP_METRIC_NAMES, HttpMetrics
from worker.ops.metrics import METRIC_NAMES, MetricsServer, WorkerMetrics
from worker.lifecycle.shadow import SHADOW_METRIC_NAMES, ShadowMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
PROM_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCKER / "prometheus" / "alerts_test.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "kronos-rt.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "kronos-rt.yml"

METRIC_RE = re.compile(r"kronos_rt_[a-z_]+")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (run .ci/install_promtool.sh, Debian package 'prometheus')"
)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows carry their own panels
    return out


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def used_metric_names(dashboard: dict) -> set[str]:
    texts = dashboard_exprs(dashboard) + [rule["expr"] for rule in alert_rules()]
    return {name for text in texts for name in METRIC_RE.findall(text)}


# --- compose -----------------------------------------------------------------

def test_compose_has_the_stack(compose):
    assert set(compose["services"]) == {"kafka", "kafka-init", "redis", "worker", "prometheus", "grafana"}


def test_every_service_has_an_image_or_a_buildable_dockerfile(compose):
    for name, svc in compose["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            build = svc["build"]
            context = COMPOSE.parent / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile} missing"
            assert (context / "pyproject.toml").is_file(), f"{name}: build context is not the repo root"


def published_host_ports(svc: dict) -> list[int]:
    ports = []
    for spec in svc.get("ports", []):
        if isinstance(spec, dict):
            ports.append(int(spec["published"]))
            continue
        parts = str(spec).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"give host and container port explicitly: {spec!r}"
        ports.append(int(parts[-2]))
        assert 1 <= int(parts[-1]) <= 65535
    return ports


def test_published_ports_are_valid_and_unique(compose):
    seen = {}
    for name, svc in compose["services"].items():
        for port in published_host_ports(svc):
            assert 1 <= port <= 65535, (name, port)
            assert port not in seen, f"host port {port} published by {seen.get(port)} and {name}"
            seen[port] = name
    # `--scale worker=N` fails if replicas bind the same host port.
    assert published_host_ports(compose["services"]["worker"]) == []


def test_worker_gets_kronos_rt_env_pointing_at_compose_services(compose):
    worker = compose["services"]["worker"]
    env = worker["environment"]
    assert isinstance(env, dict)
    assert all(key.startswith("KRONOS_RT_") for key in env), sorted(env)
    assert env["KRONOS_RT_BROKERS"] == "kafka:9092"
    assert env["KRONOS_RT_REDIS"] == "redis://redis:6379/0"
    assert env["KRONOS_RT_MODEL"] == "NeoQuasar/Kronos-small"
    assert env["KRONOS_RT_TOKENIZER"] == "NeoQuasar/Kronos-Tokenizer-base"
    assert str(env["KRONOS_RT_METRICS_PORT"]) in [str(p) for p in worker["expose"]]
    # The HTTP API listens on every interface of the container, on an exposed port.
    assert str(env["KRONOS_RT_HTTP_PORT"]) in [str(p) for p in worker["expose"]]
    assert env["KRONOS_RT_HTTP_HOST"] == "0.0.0.0"


def test_worker_reserves_one_nvidia_gpu_and_waits_for_its_dependencies(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert worker["depends_on"] == {
        "kafka-init": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])


def test_depends_on_targets_exist_and_healthy_conditions_have_healthchecks(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, spec in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, (name, dep)
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"


def test_kafka_init_creates_the_topics(compose):
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    for topic in ("bars.5m", "forecasts.5m", "bars.dlq"):
        assert re.search(rf"--create --if-not-exists --topic {re.escape(topic)} ", script), topic


def test_bind_mounts_exist(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} missing"
            else:
                assert source in compose.get("volumes", {}), f"{name}: named volume {source} not declared"



# --- the Sentinel variant (docker-compose.sentinel.yml laid over the compose file) ---

SENTINEL_COMPOSE = DOCKER / "docker-compose.sentinel.yml"


def merged(base, over):
    """What `docker compose -f base -f over` uses: mappings merged key by key, anything else replaced
    (depends_on maps merge too, as compose merges them)."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: merged(base[k], over[k]) if k in base and k in over else over.get(k, base.get(k))
                for k in {**base, **over}}
    return over


@pytest.fixture(scope="module")
def sentinel_compose(compose) -> dict:
    return merged(compose, load_yaml(SENTINEL_COMPOSE))


def test_sentinel_variant_adds_a_replica_and_three_sentinels(sentinel_compose):
    assert set(sentinel_compose["services"]) == {"kafka", "kafka-init", "redis", "redis-replica", "sentinel-1",
                                                 "sentinel-2", "sentinel-3", "worker", "prometheus", "grafana"}
    replica = sentinel_compose["services"]["redis-replica"]
    assert replica["command"][replica["command"].index("--replicaof") + 1:][:2] == ["redis", "6379"]


def test_sentinel_variant_points_the_worker_at_the_sentinels_it_starts(sentinel_compose):
    from worker.adapters import redis_connect
    from worker.config import Settings

    services = sentinel_compose["services"]
    url = services["worker"]["environment"]["KRONOS_RT_REDIS"]
    Settings(redis=url)  # a form the worker takes
    target = redis_connect.parse(url)
    assert target.topology == "sentinel" and len(target.nodes) == 3
    for host, port in target.nodes:
        script = " ".join(services[host]["command"])
        assert f"'port {port}'" in script and "--sentinel" in script
        # Each watches the compose primary under the master name the worker asks for, with a quorum of 2.
        assert f"'sentinel monitor {target.master_name} redis 6379 2'" in script
        assert "redis-cli" in " ".join(services[host]["healthcheck"]["test"])
    deps = services["worker"]["depends_on"]
    assert all(deps[f"sentinel-{i}"] == {"condition": "service_healthy"} for i in (1, 2, 3))
    assert deps["kafka-init"] == {"condition": "service_completed_successfully"}


def test_sentinel_variant_dependencies_exist_and_are_healthchecked(sentinel_compose):
    test_depends_on_targets_exist_and_healthy_conditions_have_healthchecks(sentinel_compose)
    test_published_ports_are_valid_and_unique(sentinel_compose)
    test_every_service_has_an_image_or_a_buildable_dockerfile(sentinel_compose)

# --- Dockerfile --------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_kronos_rt_worker_as_non_root():
    instr = dockerfile_instructions()
    values = lambda word: [rest for w, rest in instr if w == word]  # noqa: E731
    assert values("FROM")[0].split()[0].split(":")[0] in {"pytorch/pytorch", "nvidia/cuda"}
    assert any("pip install ." in run for run in values("RUN"))
    assert json.loads(values("ENTRYPOINT")[-1]) == ["kronos-rt"]
    assert json.loads(values("CMD")[-1]) == ["worker"]
    user = values("USER")[-1]
    assert user not in {"root", "0"}
    assert values("EXPOSE") == ["9100"]
    assert "/healthz" in values("HEALTHCHECK")[-1]
    env = " ".join(values("ENV"))
    assert "HF_HOME=" in env and "KRONOS_RT_DEVICE=cuda:0" in env and "KRONOS_RT_DTYPE=float16" in env
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    assert hf_home in " ".join(values("VOLUME"))
    # The console script the image runs is the one the project installs.
    assert 'kronos-rt = "worker.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_dockerignore_keeps_venv_and_git_out_of_the_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv"} <= ignored
    assert not {"worker", "kronos_rt", "pyproject.toml"} & ignored


# --- Prometheus --------------------------------------------------------------

def test_prometheus_scrapes_the_worker_service_on_its_metrics_port(compose):
    config = load_yaml(PROM_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kronos-rt-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == str(compose["services"]["worker"]["environment"]["KRONOS_RT_METRICS_PORT"])
    for rule_file in config["rule_files"]:
        assert (PROM_CONFIG.parent / rule_file).is_file()
    # The alerts select the worker job by this name.
    assert any('job="kronos-rt-worker"' in rule["expr"] for rule in alert_rules())


def test_alerts_cover_the_failure_modes():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert "kronos_rt_forecast_latency_seconds_bucket" in rules["KronosRtForecastLatencyP99High"]["expr"]
    assert "histogram_quantile(0.99" in rules["KronosRtForecastLatencyP99High"]["expr"]
    assert "kronos_rt_consumer_lag_messages" in rules["KronosRtConsumerLagHigh"]["expr"]
    assert "kronos_rt_dlq_events_total" in rules["KronosRtDlqRateHigh"]["expr"]
    assert "kronos_rt_forecasts_total" in rules["KronosRtNoForecasts"]["expr"]
    assert "up{" in rules["KronosRtWorkerDown"]["expr"]
    assert "kronos_rt_ready" in rules["KronosRtWorkerNotReady"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


@needs_promtool
def test_promtool_check_config_and_rules():
    for args in (["check", "config", PROM_CONFIG.name], ["check", "rules", ALERTS.name]):
        result = subprocess.run([PROMTOOL, *args], cwd=PROM_CONFIG.parent, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_alert_unit_tests():
    result = subprocess.run([PROMTOOL, "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    # promtool has no offline "check expression", but it parses recording rules: wrap each
    # panel query in one, with Grafana's variables replaced by plain values.
    rules = []
    for i, expr in enumerate(dashboard_exprs(dashboard)):
        if expr.startswith("label_values("):
            continue  # Grafana template function, not PromQL
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -----------------------------------------------------------------

def test_dashboard_panels_have_unique_ids_and_queries(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    for p in panels:
        if p["type"] == "row":
            continue
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["targets"] and all(t.get("expr") for t in p["targets"]), p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]


def test_dashboard_has_the_panels_operators_need(dashboard):
    exprs_by_metric = " ".join(dashboard_exprs(dashboard))
    for metric in ("kronos_rt_forecast_latency_seconds_bucket", "kronos_rt_stage_latency_seconds_bucket",
                   "kronos_rt_forecasts_total", "kronos_rt_batch_size_bucket", "kronos_rt_queue_depth",
                   "kronos_rt_consumer_lag_messages", "kronos_rt_dlq_events_total", "kronos_rt_events_total",
                   "kronos_rt_gpu_memory_bytes", "kronos_rt_model_info", "kronos_rt_http_requests_total",
                   "kronos_rt_http_request_duration_seconds_bucket", "kronos_rt_http_queue_depth"):
        assert metric in exprs_by_metric, metric


def test_dashboard_uses_the_provisioned_datasource(dashboard):
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    uids = {p["datasource"]["uid"] for p in all_panels(dashboard)}
    uids |= {t["datasource"]["uid"] for p in all_panels(dashboard) for t in p["targets"]}
    assert uids == {datasource["uid"]}
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    # compose mounts docker/grafana/dashboards at the provider's path.
    grafana_volumes = load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes


# --- metric names ------------------------------------------------------------

def test_every_metric_name_used_is_exported(dashboard):
    used = used_metric_names(dashboard)
    assert len(used) >= 10  # the regex found the queries at all
    exported = METRIC_NAMES | HTTP_METRIC_NAMES | SHADOW_METRIC_NAMES
    assert used <= exported, sorted(used - exported)


def test_a_running_worker_exports_every_name_dashboards_and_alerts_use(dashboard):
    from prometheus_client.parser import text_string_to_metric_families

    m = WorkerMetrics()
    # Labelled families appear only once a child exists.
    m.e2e_latency.observe(0.01)
    m.stage_latency.labels(stage="inference").observe(0.005)
    m.batch_size.observe(4)
    m.events.labels(outcome="appended").inc()
    m.dlq.labels(reason="bad_schema").inc()
    m.forecasts.inc()
    m.consumer_lag.labels(topic="bars.5m", partition="0").set(1)
    m.set_model("NeoQuasar/Kronos-small", "main", "cpu", "float32")
    m.gpu_memory.labels(kind="allocated").set(0)
    m.window_rebuilds.inc()
    m.model_swaps.labels(result="ok").inc()
    m.queue_depth.set(0)
    m.paused_partitions.set(0)
    q, lab = m.quality, ("m", "1", "1")  # forecast quality (worker/quality/live.py)
    q.scores.labels(*lab, "new").inc()
    for forecaster in ("model", "persistence", "drift"):
        q.abs_error.labels(*lab, forecaster).inc(0.1)
    q.direction.labels(*lab, "hit").inc()
    q.band.labels(*lab, "calibrated", "0.8").inc()
    q.band_hits.labels(*lab, "calibrated", "0.8").inc()
    http = HttpMetrics(m.registry)  # the API's metrics, as a worker with --http-port has them
    http.observe("/v1/forecast", 200, 0.1)
    http.batch_size.observe(4)
    http.queue_depth.set(0)
    shadows = ShadowMetrics(m.registry)  # a worker with --shadow
    shadows.forecasts.labels("m", "2").inc()
    shadows.skipped.labels("m", "2", "behind").inc()
    shadows.errors.labels("m", "2").inc()

    from worker.calendars.sessions import calendar
    from worker.ops.health import Health

    calendar("XNYS")  # calendar families appear once the process built an exchange calendar
    server = MetricsServer(m, port=0, host="127.0.0.1", ready_checks=Health().checks)  # as the worker wires it
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    scraped = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    missing = used_metric_names(dashboard) - scraped
    assert not missing, sorted(missing)
