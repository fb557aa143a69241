"""kronos-rt's subscriber client, for trading engines and dashboards that read forecasts.

    from kronos_rt_client import ForecastClient, KafkaSecurity

ForecastClient reads forecast.v1 from Kafka (duplicates dropped, staleness per symbol);
kronos_rt_client.http_client.HttpForecastClient asks a `kronos-rt serve` for ad-hoc
forecasts; both answer with ForecastView. See client.py's docstring for an example.

This package imports neither the service (worker) nor the model library (kronos_rt): a
subscriber needs only orjson and aiokafka (httpx for the HTTP client).
"""
from kronos_rt_client.client import ForecastClient, ForecastView, HorizonStep, parse_forecast
from kronos_rt_client.security import KafkaSecurity

__all__ = ["ForecastClient", "ForecastView", "HorizonStep", "KafkaSecurity", "parse_forecast"]
