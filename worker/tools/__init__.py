"""Tools around the service: replay a tape, report on a replay, the demo, the stream
benchmark and local broker/Redis helpers. The service itself never imports them."""
