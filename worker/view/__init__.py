"""`kronos-rt view`: a small web app that shows forecasts as they arrive.

It owns the live chart page and everything behind it:
- state.py: the bounded in-memory store (last N bars and forecasts per symbol, a cap on
  symbols), fed by parsed bar.v1 / forecast.v1 / score.v1 message values, and the fan-out of
  its changes to the open pages;
- feed.py: the Kafka reader that feeds it: its own aiokafka consumer without a group (assigned
  partitions, never commits), so no worker's group or offsets are touched;
- app.py: the FastAPI app: the page, a JSON snapshot per symbol, server-sent events;
- static/: index.html, app.js and the vendored TradingView Lightweight Charts release file.

It may import worker.events and worker.client (the wire-format parsers), worker.kafka and
worker.security (connecting) and worker.errors; nothing of the pipeline or the model.
"""
