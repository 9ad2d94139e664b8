"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.datasets import ckd_csv_path


@pytest.fixture()
def ckd_csv() -> Path:
    """The shipped UCI CKD table."""
    return ckd_csv_path()


@pytest.fixture()
def ckd_lines(ckd_csv: Path) -> list[str]:
    """Lines of the shipped CSV, header first, for tests that corrupt a copy."""
    return ckd_csv.read_text().splitlines()
