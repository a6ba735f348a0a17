"""Views that fit the terminal: a wide layout where it fits, a stacked one where it does not.

rich squeezes a table that is too wide by cutting cells ("k3s-worke…", an empty pins column); an
operator at 80 columns then loses the answer. Fit renders the first layout whose natural width fits
the width the console offers, so nothing is ever cut: a table becomes one block per row, a long line
becomes its phrases on lines of their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text


class Fit:
    """The first layout that fits the width offered; the last one otherwise. A layout fits when its
    widest line does (wrap=False: text), or when rich can wrap it without cutting a word (wrap=True:
    a table whose long column wraps, such as the pins, whose numbers each stay whole)."""

    def __init__(self, *layouts: RenderableType, wrap: bool = False) -> None:
        self.layouts = layouts
        self.wrap = wrap

    def _choose(self, console: Console, options: ConsoleOptions) -> RenderableType:
        for layout in self.layouts[:-1]:
            needs = Measurement.get(console, options.update(width=10_000), layout)
            if (needs.minimum if self.wrap else needs.maximum) <= options.max_width:
                return layout
        return self.layouts[-1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        yield self._choose(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._choose(console, options))


def _cell(value: str | Text) -> Text:
    return value if isinstance(value, Text) else Text(value)


def stacked(headers: Sequence[str], rows: Sequence[Sequence[str | Text]], title: str = "",
            caption: str = "") -> Group:
    """A table as one block per row: the first cell as its heading, then `header  value` per cell."""
    parts: list[RenderableType] = [Text(title, style="italic")] if title else []
    for row in rows:
        heading = _cell(row[0]).copy()
        heading.stylize("bold")
        cells = Table.grid(padding=(0, 2))  # a long value wraps in its own column, under itself
        cells.add_column(no_wrap=True)
        cells.add_column()
        for header, value in zip(headers[1:], row[1:], strict=True):
            cells.add_row(header, _cell(value))
        parts += [heading, Padding(cells, (0, 0, 0, 2))]
    if caption:
        parts.append(Text(caption))
    return Group(*parts)


def table_or_stack(headers: Sequence[str], rows: Sequence[Sequence[str | Text]], title: str = "",
                   caption: str = "") -> Fit:
    """A table with every cell whole where it fits, else the same rows stacked (never a cell cut)."""
    table = Table(title=title or None, title_justify="left", caption=caption or None, caption_justify="left")
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    return Fit(table, stacked(headers, rows, title, caption))


def phrases(*lines: Sequence[str], indent: int = 0) -> Fit:
    """Lines of phrases: each line whole where it fits, else each phrase on a line of its own
    (indented under the first), so a figure never breaks from its unit ("60⏎GiB")."""
    wide = Text("\n".join(" ".join(line) for line in lines))
    narrow = Text("\n".join(("\n" + " " * indent).join(line) for line in lines))
    return Fit(wide, narrow)
