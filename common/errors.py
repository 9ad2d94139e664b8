"""Errors meant for people: each names the file, field or site and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


class FedwardError(Exception):
    """Base class of errors that the CLI prints without a traceback."""


class ConfigError(FedwardError):
    """A run, node or site setting is missing or out of range."""


class PrivacyError(FedwardError):
    """A differential-privacy setting breaks a rule (δ too large, budget exceeded...)."""


@dataclass(frozen=True)
class CellIssue:
    """One bad cell of a table: where it is, what it holds and what was expected."""

    file: str
    row: int  # 1-based data row (the header is row 0)
    column: str
    value: str
    expected: str

    def __str__(self) -> str:
        where = f"{self.file}: row {self.row}, column '{self.column}'"
        return f"{where}: got {self.value!r}, expected {self.expected}"


class DataValidationError(FedwardError):
    """A data file does not follow its schema."""

    def __init__(self, file: str, problems: list[str] | list[CellIssue], limit: int = 10) -> None:
        self.file = file
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{file}: {len(self.problems)} problem(s):\n  {shown}{tail}")


class SiteDataError(FedwardError):
    """A site's data could not be loaded for a run: the site sits the run out (the coordinator goes on
    with the others while min-sites allow). `cause` is already safe to send: no path, no value."""

    def __init__(self, site_id: str, task: str, cause: str) -> None:
        self.site_id, self.task, self.cause = site_id, task, cause
        super().__init__(f"site {site_id} cannot load its {task} data ({cause}); it sits this run out")
