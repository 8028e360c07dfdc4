"""Markdown tables, as every report prints them (bench, stress, verify, the config reference)."""

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   align: str | None = None) -> str:
    """A GitHub table of ``header`` and ``rows`` (cells shown with ``str``).  ``align`` has one
    letter per column, ``l`` or ``r`` (right-aligned, for numbers); default all left."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not have one letter per column of {header}")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
