"""Markdown tables for command output (bench, reports)."""
from __future__ import annotations


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, a separator, one line per row (cells as given)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
