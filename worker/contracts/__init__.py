"""The wire contracts: bar.v1 in, forecast.v1 out (schemas/*.json), as the service reads and writes them.

events.py parses and checks bar events (the bar policy: stale, future, out-of-range values)
and builds forecast documents. Time-stamp and forecast-identity rules come from
kronos_rt_client.wire, which subscribers share.

May import: kronos_rt.features (numpy only), kronos_rt_client, worker.errors.
"""
