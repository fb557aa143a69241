"""Fixtures of the HTTP API tests (helpers: serving.py)."""
from tests.worker.http.serving import tape_rows  # noqa: F401 - fixtures
from tests.worker.streams import one_torch_thread  # noqa: F401 - autouse here too
