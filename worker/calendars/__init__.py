"""Market calendars: which bar times come after a given bar, per symbol.

sessions.py maps symbol globs to trading calendars and steps bar end times through them
(horizon stamps of forecasts, the alignment of realized bars to horizon steps).

May import: worker.errors and outside libraries; nothing else of the service.
"""
