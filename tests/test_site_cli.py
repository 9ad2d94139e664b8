"""`fedward site budget` and `fedward site policy check` as hospital IT runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from site_policy import policy_text

from fedward.client.ledger import PrivacyLedger, dataset_identity
from fedward.common.privacy import compose_epsilon

FEDWARD = str(Path(sys.executable).parent / "fedward")
POLICY = policy_text(8.0)


def _fedward(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FEDWARD, *args], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )


def test_budget_shows_spent_and_left(tmp_path: Path) -> None:
    data = tmp_path / "ckd.csv"
    data.write_text("x\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    fp = dataset_identity(["patient-1"])  # a site with a policy keeps its ledger beside it (no ledger-dir)
    PrivacyLedger(tmp_path).record(fp, "run-1", 1, [(1.2, 0.25, 40)], 1e-3, "rdp", "ckd", keys=["patient-1"])
    result = _fedward("site", "budget", "--state-dir", str(tmp_path / "state"), "--policy", str(policy),
                      "--accountant", "rdp", "--history")  # fmt: skip
    assert result.returncode == 0, result.stderr
    spent = compose_epsilon([(1.2, 0.25, 40)], 1e-3, "rdp")
    assert f"{spent:.3f}" in result.stdout and f"{8 - spent:.3f}" in result.stdout
    assert "run-1" in result.stdout


def test_policy_check(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    assert _fedward("site", "policy", "check", str(policy)).returncode == 0
    too_small = _fedward("site", "policy", "check", str(policy), "--samples", "5000")
    assert too_small.returncode != 0 and "1/n" in too_small.stderr
    policy.write_text("".join(line for line in POLICY.splitlines(True) if not line.startswith("delta")))
    missing = _fedward("site", "policy", "check", str(policy))
    assert missing.returncode != 0 and "delta" in missing.stderr and "Traceback" not in missing.stderr
