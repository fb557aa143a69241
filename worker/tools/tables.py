"""Tables for command output: Markdown (bench, reports) and aligned plain text (terminals)."""
from __future__ import annotations


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, a separator, one line per row (cells as given)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_columns(rows: list[list], headers: list[str] | None = None) -> str:
    """Plain text in aligned columns (two spaces apart), with an optional header row."""
    rows = [list(map(str, r)) for r in ([headers] if headers else []) + list(rows)]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
