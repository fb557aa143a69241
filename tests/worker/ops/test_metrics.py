import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.ops.metrics import METRIC_NAMES, MetricsServer, WorkerMetrics


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(metric: str, **labels) -> tuple[str, frozenset]:
    return metric, frozenset(labels.items())


@pytest.fixture
def served():
    started = []

    def start(metrics: WorkerMetrics, **kwargs) -> int:
        server = MetricsServer(metrics, port=0, host="127.0.0.1", **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def test_observed_values_show_up_in_metrics(served):
    m = WorkerMetrics()
    m.e2e_latency.observe(0.02)
    m.stage_latency.labels(stage="inference").observe(0.012)
    m.batch_size.observe(8)
    m.queue_depth.set(3)
    m.events.labels(outcome="appended").inc(5)
    m.dlq.labels(reason="bad_schema").inc()
    m.forecasts.inc(4)
    m.consumer_lag.labels(topic="bars.5m", partition="7").set(42)
    m.set_model("NeoQuasar/Kronos-small", "abc123", "cuda:0", "float16")
    m.gpu_memory.labels(kind="allocated").set(1024)
    m.window_rebuilds.inc()
    m.model_swaps.labels(result="rejected").inc()
    m.paused_partitions.set(2)

    status, ctype, body = get(served(m), "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    got = samples(body)

    assert got[key("kronos_rt_forecast_latency_seconds_count")] == 1
    assert got[key("kronos_rt_forecast_latency_seconds_bucket", le="0.025")] == 1
    assert got[key("kronos_rt_forecast_latency_seconds_bucket", le="0.01")] == 0
    assert got[key("kronos_rt_stage_latency_seconds_sum", stage="inference")] == pytest.approx(0.012)
    assert got[key("kronos_rt_batch_size_bucket", le="8.0")] == 1
    assert got[key("kronos_rt_batch_size_bucket", le="4.0")] == 0
    assert got[key("kronos_rt_queue_depth")] == 3
    assert got[key("kronos_rt_events_total", outcome="appended")] == 5
    assert got[key("kronos_rt_dlq_events_total", reason="bad_schema")] == 1
    assert got[key("kronos_rt_forecasts_total")] == 4
    assert got[key("kronos_rt_consumer_lag_messages", topic="bars.5m", partition="7")] == 42
    assert got[key("kronos_rt_model_info", name="NeoQuasar/Kronos-small", version="abc123",
                   device="cuda:0", dtype="float16", random_weights="false")] == 1
    assert got[key("kronos_rt_gpu_memory_bytes", kind="allocated")] == 1024
    assert got[key("kronos_rt_window_rebuilds_total")] == 1
    assert got[key("kronos_rt_model_swaps_total", result="rejected")] == 1
    assert got[key("kronos_rt_paused_partitions")] == 2


def test_known_label_values_are_exported_before_first_event(served):
    got = samples(get(served(WorkerMetrics()), "/metrics")[2])
    for stage in ("receive", "queue", "inference", "publish"):
        assert got[key("kronos_rt_stage_latency_seconds_count", stage=stage)] == 0
    for outcome in ("appended", "inserted", "corrected", "duplicate", "too_old", "dlq", "buffered"):
        assert got[key("kronos_rt_events_total", outcome=outcome)] == 0
    assert got[key("kronos_rt_gpu_memory_bytes", kind="reserved")] == 0
    assert got[key("kronos_rt_model_swaps_total", result="ok")] == 0


def test_batch_size_buckets_are_powers_of_two_up_to_1024():
    m = WorkerMetrics()
    m.batch_size.observe(1)
    buckets = [s.labels["le"] for f in m.registry.collect() if f.name == "kronos_rt_batch_size"
               for s in f.samples if s.name.endswith("_bucket")]
    assert buckets == [str(float(2**i)) for i in range(11)] + ["+Inf"]


def test_metric_names_cover_every_exported_sample():
    m = WorkerMetrics()
    m.dlq.labels(reason="x").inc()
    m.consumer_lag.labels(topic="t", partition="0").set(1)
    m.set_model("n", "v", "cpu", "float32")
    exported = {s.name for f in m.registry.collect() for s in f.samples}
    assert exported <= METRIC_NAMES
    assert {"kronos_rt_forecast_latency_seconds_bucket", "kronos_rt_forecasts_total",
            "kronos_rt_model_info", "kronos_rt_queue_depth"} <= METRIC_NAMES
    # Counters are stored with _total; the bare family name is not a queryable series.
    assert "kronos_rt_forecasts" not in METRIC_NAMES


def test_healthz_and_unknown_path(served):
    port = served(WorkerMetrics())
    assert get(port, "/healthz")[0::2] == (200, "ok")
    assert get(port, "/nope")[0] == 404


def test_readyz_flips_with_checks(served):
    checks = {"kafka": False, "model": True}
    port = served(WorkerMetrics(), ready_checks=lambda: dict(checks))

    status, ctype, body = get(port, "/readyz")
    assert (status, ctype) == (503, "application/json")
    assert json.loads(body) == {"kafka": False, "model": True}

    checks["kafka"] = True
    status, _, body = get(port, "/readyz")
    assert status == 200
    assert json.loads(body) == {"kafka": True, "model": True}


def test_a_scrape_reads_the_ready_checks_into_a_gauge(served):
    checks = {"kafka": True, "fetching": False}
    port = served(WorkerMetrics(), ready_checks=lambda: dict(checks))
    body = get(port, "/metrics")[2]
    assert 'kronos_rt_ready{check="kafka"} 1.0' in body and 'kronos_rt_ready{check="fetching"} 0.0' in body
    checks["fetching"] = True
    assert 'kronos_rt_ready{check="fetching"} 1.0' in get(port, "/metrics")[2]


def test_readyz_without_checks_is_ready_and_a_raising_check_is_not(served):
    assert get(served(WorkerMetrics()), "/readyz")[0::2] == (200, "{}")

    def broken() -> dict[str, bool]:
        raise RuntimeError("redis gone")

    status, _, body = get(served(WorkerMetrics(), ready_checks=broken), "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready_checks": False}


def test_two_workers_in_one_process_do_not_collide(served):
    a, b = WorkerMetrics(), WorkerMetrics()
    assert a.registry is not b.registry
    a.forecasts.inc(3)
    port_a, port_b = served(a), served(b)
    assert port_a != port_b
    assert samples(get(port_a, "/metrics")[2])[key("kronos_rt_forecasts_total")] == 3
    assert samples(get(port_b, "/metrics")[2])[key("kronos_rt_forecasts_total")] == 0


def test_stop_releases_the_port():
    server = MetricsServer(WorkerMetrics(), port=0, host="127.0.0.1")
    port = server.start()
    assert get(port, "/healthz")[0] == 200
    with pytest.raises(RuntimeError):
        server.start()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    server.stop()  # idempotent
