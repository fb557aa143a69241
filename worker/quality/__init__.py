"""Forecast quality: scores against realized bars, calibrated bands, their Redis state and metrics.

- scoring.py: one horizon step scored against the realized close (pure math);
- calibration.py: online conformal calibration of the quantile bands (pure math);
- live.py: stored forecasts, atomic scoring claims and calibration state in Redis, and the
  quality metrics.

May import: worker.contracts, worker.calendars, worker.adapters, worker.errors.
"""
