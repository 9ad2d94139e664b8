"""Shared fixtures; puts tests/support/ (helper modules, imported by name) on sys.path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedward.common.datasets import ckd_csv_path

SUPPORT = Path(__file__).resolve().parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real federations (marked slow, up to minutes each, much of it waiting on Flower's polls and
    heartbeats) first, so that with xdist (pyproject's addopts) the rest of the suite runs beside them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs sign their provenance with a throwaway key, not the developer's ~/.fedward key."""
    from fedward.server.deployment.provision import write_provenance_key
    from fedward.server.provenance.signing import PROVENANCE_KEY, SIGNING_KEY_ENV

    folder = tmp_path_factory.mktemp("signing")
    write_provenance_key(folder)
    key = folder / PROVENANCE_KEY
    os.environ[SIGNING_KEY_ENV] = str(key)
    return key


@pytest.fixture()
def ckd_csv() -> Path:
    """The shipped UCI CKD table."""
    return ckd_csv_path()


@pytest.fixture()
def ckd_lines(ckd_csv: Path) -> list[str]:
    """Lines of the shipped CSV, header first, for tests that corrupt a copy."""
    return ckd_csv.read_text().splitlines()
