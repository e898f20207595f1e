"""Tables of the reports: one table is a header and rows of cells, rendered as Markdown or HTML.

Numbers become cells through :func:`fmt` (a value) and :func:`fmt_stat` (a mean over seeds with its
standard deviation), so every report writes them the same way.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "–"


@dataclass
class Table:
    """A header and rows of cells (already text)."""

    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        return markdown_table(self.header, self.rows)

    def html(self) -> str:
        return html_table(self.header, self.rows)


def fmt(value: Any, digits: int = 3) -> str:
    """A cell for one value: floats to ``digits`` decimals (3 significant figures when huge), None/NaN as –."""
    if value is None:
        return MISSING
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def fmt_stat(stat: dict[str, float] | None, digits: int = 2) -> str:
    """A cell for ``{"mean", "std", "n"}``: ``mean ± std`` over several values, ``mean`` alone for one."""
    if not stat or not math.isfinite(stat.get("mean", float("nan"))):
        return "-"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def fmt_interval(stat: dict[str, float] | None, signed: bool = False, digits: int = 2) -> str:
    """A cell for ``{"mean", "lo", "hi", "n"}`` (:func:`tisdpo.report.frontier.interval`): ``mean [lo, hi]``;
    ``signed`` writes the sign of a difference."""
    if not stat or stat.get("n", 0) == 0 or not math.isfinite(stat.get("mean", float("nan"))):
        return "-"
    spec = f"+.{digits}f" if signed else f".{digits}f"
    if not math.isfinite(stat.get("lo", float("nan"))):
        return format(stat["mean"], spec)
    return f"{format(stat['mean'], spec)} [{format(stat['lo'], spec)}, {format(stat['hi'], spec)}]"


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; a ``|`` inside a cell is escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def html_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML ``<table>``, every cell escaped."""

    def line(tag: str, cells: Sequence[Any]) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(cell))}</{tag}>" for cell in cells) + "</tr>"

    return "\n".join(["<table>", line("th", header), *(line("td", row) for row in rows), "</table>"])
