"""The HTTP API: ad-hoc forecasts (`POST /v1/forecast`, `/v1/forecast:batch`) batched on the
same engine and micro-batcher as the stream.

- schema.py: request models (pydantic), strict or lenient about unknown fields;
- service.py: semantic checks into engine items, admission, waiting, forecast documents;
- app.py: the FastAPI app (auth, body limit, CORS, metrics, errors as JSON);
- server.py: uvicorn inside the caller's event loop, and `start_api` for worker and serve;
- metrics.py: the API's Prometheus metrics.

Its client for callers is kronos_rt_client.http_client. May import: worker.lifecycle, worker.ops,
worker.pipeline and everything below them.
"""
from worker.http.app import create_app
from worker.http.server import HttpServer, start_api

__all__ = ["create_app", "HttpServer", "start_api"]
