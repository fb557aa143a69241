"""Fixtures of the HTTP API tests (helpers: serving.py)."""
from tests.worker.http.serving import one_torch_thread, tape_rows  # noqa: F401 - fixtures
