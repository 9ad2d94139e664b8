"""`server.deployment.superlink` and `.launch` without Flower: federation, SuperLink flags, registration,
runs."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedward.common.errors import ConfigError, FedwardError
from fedward.server.deployment import launch, superlink
from fedward.server.deployment.provision import Federation, provision


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return provision(tmp_path / "fed", ["H1", "H2"], sans=["127.0.0.1"], port=8123, name="unitfed")


def test_load_federation_reads_the_provisioned_profile(fed: Federation) -> None:
    files = superlink.load_federation(fed.root)
    assert (files.name, files.address, files.port) == ("unitfed", "127.0.0.1:8123", 8123)
    assert files.public_keys == fed.site_public_keys
    with superlink.cli_home(files, "127.0.0.1:9999") as home:
        profile = tomllib.loads((home / "config.toml").read_text())
    assert profile["superlink"]["default"] == "unitfed"
    assert profile["superlink"]["unitfed"] == {
        "address": "127.0.0.1:9999",
        "root-certificates": str(fed.ca_cert),
    }
    assert not home.exists()


def test_load_federation_names_what_is_wrong(fed: Federation, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a provisioned federation"):
        superlink.load_federation(tmp_path)
    other = provision(tmp_path / "other", ["X"], sans=["127.0.0.1"])
    fed.server_cert.write_bytes(other.server_cert.read_bytes())  # a certificate from another CA
    with pytest.raises(ConfigError, match="not issued by"):
        superlink.load_federation(fed.root)
    os.chmod(fed.server_key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        superlink.load_federation(fed.root)
    fed.flwr_config.unlink()
    with pytest.raises(ConfigError, match=r"flwr-config\.toml: missing"):
        superlink.load_federation(fed.root)


def test_superlink_command_has_tls_auth_database_and_no_uv_sync(fed: Federation, tmp_path: Path) -> None:
    command = superlink.superlink_command(
        superlink.load_federation(fed.root), host="0.0.0.0", port=8123, state_dir=tmp_path
    )
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert Path(command[0]).name == "flower-superlink"
    assert flags["--ssl-certfile"] == str(fed.server_cert) and flags["--ssl-keyfile"] == str(fed.server_key)
    assert flags["--ssl-ca-certfile"] == str(fed.ca_cert)
    assert "--enable-supernode-auth" in command and "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command
    assert command[command.index("--database") + 1] == str(tmp_path / "superlink.db")
    assert superlink.local_address("0.0.0.0", 8123) == "127.0.0.1:8123"


def test_register_is_idempotent_and_checks_success(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "H1": {"success": True, "node-id": 42},
        "H2": {
            "success": False,
            "error-message": "Using SuperLink: x\n\n[code: 23] Public key already in use.",
        },
    }
    calls: list[list[str]] = []

    def fake(args: list[str], home: Path, timeout: float = 0) -> dict[str, Any]:
        calls.append(args)
        return answers[args[-1]]

    monkeypatch.setattr(superlink, "flwr_json", fake)
    done = superlink.register_sites(superlink.load_federation(fed.root), Path("."), lambda _key: False)
    assert [(r.site, r.node_id, r.new) for r in done] == [("H1", "42", True), ("H2", None, False)]
    assert calls[0] == ["supernode", "register", str(fed.site_public_keys["H1"]), "unitfed", "--name", "H1"]

    # a key the SuperLink holds only as unregistered: the site gets a new key pair, which is registered
    old_key = fed.site_public_keys["H2"].read_text()
    registered = dict(answers)

    def fresh_key_registers(args: list[str], home: Path, timeout: float = 0) -> dict[str, Any]:
        calls.append(args)
        if args[-1] == "H2" and Path(args[2]).read_text() != old_key:
            return {"success": True, "node-id": 7}
        return registered[args[-1]]

    monkeypatch.setattr(superlink, "flwr_json", fresh_key_registers)
    done = superlink.register_sites(
        superlink.load_federation(fed.root), Path("."), lambda key: key.stem == "H2"
    )
    assert [(r.site, r.node_id, r.new, r.rekeyed) for r in done] == [
        ("H1", "42", True, None),
        ("H2", "7", True, fed.sites["H2"].private_key),
    ]
    assert fed.site_public_keys["H2"].read_text() != old_key
    monkeypatch.setattr(superlink, "flwr_json", fake)
    answers["H2"] = {"success": False, "error-message": "Using SuperLink: x\n\n[code: 5] Unauthenticated."}
    with pytest.raises(FedwardError, match=r"registering site H2 .* failed: \[code: 5\] Unauthenticated"):
        superlink.register_sites(superlink.load_federation(fed.root), Path("."), lambda _key: False)


def test_run_overrides_parse_like_flwr_and_are_validated(tmp_path: Path) -> None:
    values = launch.run_overrides(["num-server-rounds=2 min-sites=2", 'run-name="a"'], tmp_path / "runs")
    assert values == {
        "num-server-rounds": 2,
        "min-sites": 2,
        "run-name": "a",
        "runs-dir": str((tmp_path / "runs").resolve()),
    }
    assert launch.run_overrides([], tmp_path)["run-name"].startswith("ckd-")
    with pytest.raises(ConfigError, match="unknown run config key"):
        launch.run_overrides(["rounds=2"], tmp_path)
    with pytest.raises(ConfigError, match="--run-config"):
        launch.run_overrides(['runs-dir="unterminated'], tmp_path)
    written = launch.toml_file({"a": 'x"y', "b": True, "c": 0.5}, tmp_path / "c.toml")
    assert tomllib.loads(written.read_text()) == {"a": 'x"y', "b": True, "c": 0.5}


def test_wait_for_run_reports_each_status_until_finished() -> None:
    rows = iter([{"status": "pending"}, {"status": "running"}, {"status": "running"}, {"status": COMPLETED}])
    seen: list[str] = []
    row = launch.wait_for_run(lambda: next(rows), timeout=5, poll=0.0, on_change=seen.append)
    assert row["status"] == COMPLETED and seen == ["pending", "running", COMPLETED]
    with pytest.raises(FedwardError, match="not finished within"):
        launch.wait_for_run(lambda: {"status": "running"}, timeout=0.05, poll=0.01)


COMPLETED = launch.COMPLETED


def _summary(run_dir: Path, **changes: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": 2, "rounds-completed": 2, "stopped": None, **changes}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_check_outcome_needs_completed_status_and_a_full_summary(tmp_path: Path) -> None:
    row = {"run-id": "7", "status": COMPLETED}
    with pytest.raises(FedwardError, match="wrote no"):
        launch.check_outcome(row, tmp_path / "r")
    _summary(tmp_path / "r")
    assert launch.check_outcome(row, tmp_path / "r")["rounds-completed"] == 2
    with pytest.raises(FedwardError, match="ended as finished:failed"):
        launch.check_outcome({"run-id": "7", "status": "finished:failed"}, tmp_path / "r")
    _summary(tmp_path / "r", stopped="round 1: only 0 site(s) trained")
    with pytest.raises(FedwardError, match="stopped early: round 1"):
        launch.check_outcome(row, tmp_path / "r")
    _summary(tmp_path / "r", **{"rounds-completed": 1})
    with pytest.raises(FedwardError, match="completed 1 of 2 rounds"):
        launch.check_outcome(row, tmp_path / "r")
