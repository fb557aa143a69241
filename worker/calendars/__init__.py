"""Market calendars: which bar times come after a given bar, per symbol.

sessions.py maps symbol globs to trading calendars (exchange_calendars codes, or continuous)
and steps bar end times through them (horizon stamps of forecasts, the alignment of realized
bars to horizon steps); session_table.py holds an exchange's sessions as integer arrays,
built once per code, so the next N bar times cost a bisect and additions.

May import: worker.errors, worker.contracts (bar-time encoding) and outside libraries;
nothing else of the service.
"""
