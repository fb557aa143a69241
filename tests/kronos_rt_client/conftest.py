"""The HTTP client's tests run against a real `kronos-rt serve` app (tests/worker/http/serving.py)."""
from tests.worker.http.serving import tape_rows  # noqa: F401 - fixtures
from tests.worker.streams import one_torch_thread  # noqa: F401 - autouse here too
