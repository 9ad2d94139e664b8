"""`fedward site budget --verify`: the hash chain and head file show edited, deleted and truncated rows."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from site_policy import policy_text
from typer.testing import CliRunner

from fedward.client.cli import app as site_app
from fedward.client.ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    SECRET_FILE,
    PrivacyLedger,
    dataset_identity,
    keyed_fingerprint,
)
from fedward.common.errors import ConfigError

POLICY = policy_text(8.0)
KEYS = ["k1", "k2", "k3"]


def _ledger(folder: Path) -> PrivacyLedger:
    """Register, reserve + settle, a one-off spend: 5 chained rows."""
    ledger = PrivacyLedger(folder)
    fp = dataset_identity(KEYS)
    token, reason = ledger.reserve(fp, KEYS, "run-1", 1, [(1.1, 0.25, 40)], 1e-3, "rdp", "ckd")
    assert reason is None and token
    ledger.settle(token, [(1.1, 0.25, 38)])
    ledger.spend_within(fp, KEYS, "run-1", 0, [(2.0, 1.0, 1)], 1e-3, "rdp", "ckd", "statistics")
    return ledger


def _verify(policy: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        site_app, ["budget", "--policy", str(policy), "--verify"], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.output


def _sql(folder: Path, statement: str) -> None:
    with sqlite3.connect(folder / LEDGER_FILE) as db:
        db.execute(statement)


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    _ledger(tmp_path)  # default ledger-dir: the policy file's folder
    return path


def test_intact_ledger_verifies_and_lists(policy: Path) -> None:
    code, output = _verify(policy)
    assert code == 0 and "ok" in output
    listing = CliRunner().invoke(
        site_app,
        ["budget", "--policy", str(policy), "--accountant", "rdp", "--history"],
        env={"COLUMNS": "200"},
    )
    assert listing.exit_code == 0, listing.output
    assert "run-1" in listing.output and "38" in listing.output


def test_edited_row_is_named(policy: Path) -> None:
    _sql(policy.parent, "UPDATE rows SET steps = 1 WHERE id = 3")
    code, output = _verify(policy)
    assert code == 1 and "row 3" in output and "edited" in output


def test_deleted_row_is_named(policy: Path) -> None:
    _sql(policy.parent, "DELETE FROM rows WHERE id = 2")
    code, output = _verify(policy)
    assert code == 1 and "row 3" in output and "deleted" in output


def test_truncated_ledger_is_found_by_its_head(policy: Path) -> None:
    _sql(policy.parent, "DELETE FROM rows WHERE id >= 5")  # the last rows: the chain itself is fine
    code, output = _verify(policy)
    assert code == 1 and "row 5" in output and "truncated" in output


def test_changed_patient_list_is_found(policy: Path) -> None:
    _sql(policy.parent, "DELETE FROM members WHERE patient = 'k2'")  # would lower inherited spend
    code, output = _verify(policy)
    assert code == 1 and "patient list" in output


def test_v1_ledger_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / LEDGER_FILE) as db:
        db.execute("CREATE TABLE steps (id INTEGER PRIMARY KEY)")
        db.execute("PRAGMA user_version = 1")
    with pytest.raises(ConfigError, match=r"schema 1.*move it"):
        PrivacyLedger(tmp_path)


def test_public_fingerprint_is_keyed_by_a_private_site_secret(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert (tmp_path / HEAD_FILE).is_file()
    key = ledger.site_secret()
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600 and len(key) == 32
    assert PrivacyLedger(tmp_path).site_secret() == key  # stable across restarts
    identity = dataset_identity(KEYS)
    public = keyed_fingerprint(identity, key)
    assert public != identity and public == keyed_fingerprint(identity, key)
    assert keyed_fingerprint(identity) != public  # without a ledger: a random per-process key
