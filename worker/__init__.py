"""kronos-rt streaming service: Kafka bars in, Redis windows, micro-batched Kronos, forecasts out.

Imports `kronos_rt` (the inference library); `kronos_rt` never imports this package.
"""
