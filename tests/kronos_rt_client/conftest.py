"""The HTTP client's tests run against a real `kronos-rt serve` app (tests/worker/http/serving.py)."""
from tests.worker.http.serving import one_torch_thread, tape_rows  # noqa: F401 - fixtures
