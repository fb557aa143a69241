"""Reading Markdown tables back out of a command's output, for tests of printed tables."""
from __future__ import annotations


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in text, as rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables
