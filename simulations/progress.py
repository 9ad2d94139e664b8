"""Progress of a simulated run: a live bar (rounds, metrics, ETA) in a terminal, plain lines elsewhere.

The ServerApp prints one line per round (`round  3/10  accuracy 0.975  roc-auc 0.996  ε max 1.21`); this
view turns those lines into a rich progress bar when the console is a terminal, and passes every other
line (fedward's notes, errors) through above it. Piped to a file or CI log, it prints the lines as they are.
"""

from __future__ import annotations

import re
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ROUND_LINE = re.compile(r"^round\s+(\d+)/(\d+)\s*(.*)$")


class RunProgress:
    """Feed it the run's output lines; use as a context manager around the run."""

    def __init__(self, console: Console, title: str = "rounds") -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.title = title

    def __enter__(self) -> RunProgress:
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )  # fmt: skip
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=None, metrics="starting (sites, Ray)")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def feed(self, line: str) -> None:
        """One line of the run's output."""
        line = line.rstrip("\n")
        match = ROUND_LINE.match(line)
        if self.progress is None or self.task is None:
            self.console.print(line, markup=False, highlight=False)
            return
        if match:
            done, total, metrics = int(match.group(1)), int(match.group(2)), match.group(3)
            self.progress.update(self.task, completed=done, total=total, metrics=" ".join(metrics.split()))
        else:
            self.progress.console.print(line, markup=False, highlight=False)
