"""Side-by-side quality of two model versions from their score.v1 events (`models compare`).

Scores come from the scores topic (a bounded read up to its current end) or a saved file
(JSON lines of score.v1 events, a JSON array of them, or an object with a "scores" array).
A step scored several times (redelivered after a crash, re-scored after a correction)
counts once, with its latest score. By default only the (symbol, as_of, step) both versions
scored are compared, so the two columns describe the same bars (a shadow skipped under load
is not held against either); `common=False` takes each version's own scores.

Per horizon step and overall: count, MAE of the model and of persistence, skill
(1 - MAE / MAE_persistence), direction hit rate, coverage of each band (raw and calibrated)
beside its nominal level, mean pinball loss (over levels) and mean CRPS where present.
"""
from __future__ import annotations

import json
from pathlib import Path

from worker.tools.tables import format_columns


def parse_spec(spec: str) -> tuple[str, str]:
    name, at, version = spec.partition("@")
    if not (name and at and version):
        raise ValueError(f"{spec!r}: use NAME@VERSION (as the scores name the model)")
    return name, version


def load_scores(path) -> list[dict]:
    """score.v1 events of a file: JSON lines, a JSON array, or {"scores": [...]}."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("scores")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected score.v1 events (JSON lines, an array, or an object with 'scores')")
    return [d for d in data if isinstance(d, dict) and d.get("schema") == "score.v1"]


async def read_scores(brokers: str, topic: str, timeout_s: float = 60.0, security=None) -> list[dict]:
    """score.v1 events of `topic` up to its current end (outside any consumer group)."""
    from worker.adapters.kafka import read_topic

    out = []
    async for m in read_topic(brokers, topic, timeout_s=timeout_s, client_id="kronos-rt-compare", security=security):
        try:
            doc = json.loads(m.value)
        except (ValueError, TypeError):
            continue  # not ours to judge here: skipped
        if isinstance(doc, dict) and doc.get("schema") == "score.v1":
            out.append(doc)
    return out


def latest_per_step(scores: list[dict], spec: str) -> dict[tuple, dict]:
    """(symbol, as_of, step) -> the latest score of the model NAME@VERSION."""
    name, version = parse_spec(spec)
    out = {}
    for d in scores:
        m = d.get("model") or {}
        if m.get("name") == name and str(m.get("version")) == version:
            out[(d.get("symbol"), d.get("as_of"), d.get("step"))] = d
    return out


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def figures(rows: list[dict]) -> dict:
    """The compared figures of a set of scores."""
    mae = _mean(r.get("abs_error") for r in rows)
    both = [r for r in rows if r.get("abs_error") is not None and r.get("persistence_abs_error") is not None]
    mae_p = _mean(r["persistence_abs_error"] for r in both)
    mae_b = _mean(r["abs_error"] for r in both)
    calls = [r["direction_hit"] for r in rows if r.get("direction_hit") is not None]
    out = {"count": len(rows), "mae": mae, "mae_persistence": _mean(r.get("persistence_abs_error") for r in rows),
           "skill": (1.0 - mae_b / mae_p) if mae_b is not None and mae_p else None,
           "hit_rate": sum(calls) / len(calls) if calls else None, "coverage": {}, "pinball": {},
           "crps": _mean(r.get("crps") for r in rows)}
    for kind in ("raw", "calibrated"):
        parts = [r[kind] for r in rows if isinstance(r.get(kind), dict)]
        bands = sorted({b for p in parts for b in p.get("bands", {})}, key=float)
        for b in bands:
            hits = [p["bands"][b] for p in parts if b in p.get("bands", {})]
            out["coverage"][f"{kind} {b}"] = sum(hits) / len(hits)
        losses = [sum(p["pinball"]) / len(p["pinball"]) for p in parts if p.get("pinball")]
        if losses:
            out["pinball"][kind] = sum(losses) / len(losses)
    return out


def compare(scores: list[dict], spec_a: str, spec_b: str, common: bool = True) -> dict:
    """{"a", "b", "common", "steps": {step: {"a": figures, "b": figures}}, "overall": {...}}."""
    a, b = latest_per_step(scores, spec_a), latest_per_step(scores, spec_b)
    if common:
        keys = a.keys() & b.keys()
        a, b = {k: a[k] for k in keys}, {k: b[k] for k in keys}
    steps = sorted({k[2] for k in a} | {k[2] for k in b}, key=lambda s: (s is None, s))
    by_step = {s: {"a": figures([v for k, v in a.items() if k[2] == s]),
                   "b": figures([v for k, v in b.items() if k[2] == s])} for s in steps}
    return {"a": spec_a, "b": spec_b, "common": common, "steps": by_step,
            "overall": {"a": figures(list(a.values())), "b": figures(list(b.values()))}}


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_comparison(result: dict) -> str:
    """Plain-text table: one row per horizon step and one overall, 'A / B' in each cell."""
    rows_in = [(str(s), f) for s, f in result["steps"].items()] + [("all", result["overall"])]
    bands = sorted({c for _, f in rows_in for side in ("a", "b") for c in f[side]["coverage"]},
                   key=lambda c: (c.split()[0] != "raw", float(c.split()[1])))
    pin = sorted({k for _, f in rows_in for side in ("a", "b") for k in f[side]["pinball"]})
    crps = any(f[side]["crps"] is not None for _, f in rows_in for side in ("a", "b"))
    header = ["STEP", "N", "MAE", "MAE PERSIST", "SKILL", "HIT RATE"]
    header += [f"COV {c.upper()} (NOM {100 * float(c.split()[1]):.0f}%)" for c in bands]
    header += [f"PINBALL {k.upper()}" for k in pin] + (["CRPS"] if crps else [])
    rows = []
    for step, f in rows_in:
        a, b = f["a"], f["b"]

        def pair(fa, fb):
            return f"{fa} / {fb}"
        row = [step, pair(a["count"], b["count"]), pair(_f(a["mae"]), _f(b["mae"])),
               pair(_f(a["mae_persistence"]), _f(b["mae_persistence"])),
               pair(_f(a["skill"], 3), _f(b["skill"], 3)), pair(_pct(a["hit_rate"]), _pct(b["hit_rate"]))]
        row += [pair(_pct(a["coverage"].get(c)), _pct(b["coverage"].get(c))) for c in bands]
        row += [pair(_f(a["pinball"].get(k)), _f(b["pinball"].get(k))) for k in pin]
        if crps:
            row.append(pair(_f(a["crps"]), _f(b["crps"])))
        rows.append(row)
    which = "steps both scored" if result["common"] else "each version's own scores"
    title = f"A = {result['a']}   B = {result['b']}   (cells: A / B; {which}; skill = 1 - MAE / MAE persistence)"
    return title + "\n" + format_columns(rows, header)
