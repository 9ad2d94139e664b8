"""Provisioned material with real Flower 1.42 processes: TLS SuperLink, SuperNode auth, register/list."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flower_processes import stop_groups, wait_for

from fedward.server.deployment.provision import provision

BIN = Path(sys.executable).parent  # the venv's bin: flower-superlink, flower-supernode, flwr
FEDERATION = "testfed"

pytestmark = pytest.mark.skipif(
    not (BIN / "flower-superlink").exists(), reason="Flower CLIs not installed next to this Python"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(flwr_home: Path) -> dict[str, str]:
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the SuperLink spawns flower-superexec
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Procs:
    """Starts processes in their own process groups and stops every group at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], flwr_home: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, env=_env(flwr_home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append((proc, log))
        return proc, log

    def stop_all(self) -> None:
        stop_groups([proc for proc, _ in self.started], grace=5)


@pytest.fixture()
def procs(tmp_path: Path) -> Iterator[_Procs]:
    """Every Flower process started by the test; all their process groups die at teardown."""
    started = _Procs(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _flwr_json(args: list[str], flwr_home: Path) -> dict[str, Any]:
    """Run `flwr ... --format json`; note that 1.42 exits 0 even when it reports success=false."""
    done = subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"],
        env=_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    start = done.stdout.find("{")
    if start < 0:
        raise AssertionError(f"flwr {args}: no JSON (rc={done.returncode})\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout[start:])


def _nodes(flwr_home: Path) -> dict[str, str] | None:
    """node-id -> status, or None while the SuperLink does not answer."""
    reply = _flwr_json(["supernode", "list", FEDERATION], flwr_home)
    if not reply.get("success"):
        return None
    return {str(n["node-id"]): str(n["status"]) for n in reply["nodes"]}


@pytest.mark.slow
def test_tls_superlink_admits_registered_supernode_only(tmp_path: Path, procs: _Procs) -> None:
    port = _free_port()
    fed = provision(
        tmp_path / "federation", ["H1", "H2"], sans=["127.0.0.1", "localhost"], port=port, name=FEDERATION
    )
    assert fed.address == f"127.0.0.1:{port}"

    superlink = [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(fed.ca_cert),
        "--ssl-certfile", str(fed.server_cert),
        "--ssl-keyfile", str(fed.server_key),
        "--enable-supernode-auth",
        "--database", str(tmp_path / "state.db"),
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    _, link_log = procs.start("superlink", superlink, tmp_path / "home-superlink")
    cli_home = tmp_path / "home-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(fed.flwr_config.read_text())  # the generated profile, as is

    # the CLI reaches the SuperLink over TLS, verified against the provisioned CA; nothing registered yet
    assert wait_for("the SuperLink's Control API", lambda: _nodes(cli_home) == {}, 30, [link_log]) is True

    reply = _flwr_json(["supernode", "register", str(fed.site_public_keys["H1"]), FEDERATION], cli_home)
    assert reply.get("success") is True, reply
    node_id = str(reply["node-id"])
    assert _nodes(cli_home) == {node_id: "registered"}

    def supernode(site: str) -> tuple[subprocess.Popen[bytes], Path]:
        kit = fed.sites[site]
        args = [
            str(BIN / "flower-supernode"),
            "--root-certificates", str(kit.ca_cert),
            "--auth-supernode-private-key", str(kit.private_key),
            "--superlink", f"127.0.0.1:{port}",
            "--node-config", str(kit.node_config),
            "--port", str(_free_port()),  # the SuperNode's local Runtime API (default 9094)
            "--max-retries", "3",
        ]  # fmt: skip
        return procs.start(f"supernode-{site}", args, tmp_path / f"home-{site}")

    _, h1_log = supernode("H1")
    intruder, h2_log = supernode("H2")  # a genuine kit whose key was never registered
    logs = [link_log, h1_log, h2_log]

    wait_for(
        "the registered SuperNode to be online", lambda: _nodes(cli_home) == {node_id: "online"}, 30, logs
    )

    # the unregistered SuperNode is refused: Fleet ActivateNode fails (ApiError 2004) and it exits 305
    wait_for("the unregistered SuperNode to give up", lambda: intruder.poll() is not None, 30, logs)
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in h2_log.read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log.read_text(errors="replace")
    assert _nodes(cli_home) == {node_id: "online"}
