"""`client.node` without Flower: the checks before a site connects, and the SuperNode's command line."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedward.client import node
from fedward.common.errors import ConfigError, DataValidationError, PrivacyError
from fedward.common.tls_probe import tls_handshake
from fedward.server.deployment import superlink
from fedward.server.deployment.provision import Federation, load_site_kit, provision

FEDWARD = str(Path(sys.executable).parent / "fedward")
POLICY = """[policy]
epsilon-cap = 8.0
delta = {delta}
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["ckd"]
min-samples = 10
"""


@pytest.fixture()
def fed(tmp_path: Path) -> Federation:
    return provision(tmp_path / "fed", ["H1"], sans=["127.0.0.1", "localhost"], port=8443, name="sitefed")


@pytest.fixture()
def data(tmp_path: Path, ckd_lines: list[str]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("\n".join(ckd_lines[:101]) + "\n")  # header + 100 patients
    (folder / "test.csv").write_text("\n".join([ckd_lines[0], *ckd_lines[101:131]]) + "\n")
    return folder


def _policy(tmp_path: Path, delta: float = 1e-3) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(delta=delta))
    return path


def test_prepare_node_checks_and_writes_the_node_config(fed: Federation, data: Path, tmp_path: Path) -> None:
    plan = node.prepare_node(
        fed.sites["H1"].dir, data, load_site_kit, state=tmp_path / "state", policy=_policy(tmp_path)
    )
    assert plan.superlink == "127.0.0.1:8443"  # from the kit's README
    assert plan.training_samples == 100
    assert tomllib.loads(plan.node_config_file.read_text()) == {
        "site-id": "H1",
        "data-dir": str(data),
        "policy-file": str(tmp_path / "policy.toml"),
        "state-dir": str(tmp_path / "state"),
    }
    command = node.supernode_command(plan, port=9100, max_wait_time=30)
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert Path(command[0]).name == "flower-supernode"
    assert flags["--root-certificates"] == str(fed.sites["H1"].ca_cert)
    assert flags["--auth-supernode-private-key"] == str(fed.sites["H1"].private_key)
    assert flags["--superlink"] == "127.0.0.1:8443" and flags["--node-config"] == str(plan.node_config_file)
    assert flags["--port"] == "9100" and flags["--max-wait-time"] == "30" and "--insecure" not in command


def test_prepare_node_stops_on_bad_data_policy_or_address(
    fed: Federation, data: Path, tmp_path: Path, ckd_lines: list[str]
) -> None:
    kit, state = fed.sites["H1"].dir, tmp_path / "state"

    def prepare(folder: Path = data, policy: Path | None = None, superlink: str | None = None) -> None:
        node.prepare_node(
            kit, folder, load_site_kit, state=state, policy=policy or _policy(tmp_path), superlink=superlink
        )

    with pytest.raises(ConfigError, match="does not exist"):
        prepare(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is empty"):
        prepare(tmp_path / "empty")
    (tmp_path / "empty" / "a.csv").write_text("x\n")
    (tmp_path / "empty" / "b.csv").write_text("x\n")
    with pytest.raises(DataValidationError, match=r"expected train\.csv and test\.csv"):
        prepare(tmp_path / "empty")
    with pytest.raises(PrivacyError, match="not below 1/n"):
        prepare(policy=_policy(tmp_path, delta=0.05))  # 100 training rows: δ must be <= 0.01
    with pytest.raises(ConfigError, match=r"site policy .* does not exist"):
        prepare(policy=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        prepare(superlink="fl.example.org")
    with pytest.raises(ConfigError, match="missing from the site kit"):
        node.prepare_node(tmp_path, data, load_site_kit, state=state, policy=_policy(tmp_path))


@pytest.fixture()
def tls_server(fed: Federation) -> Iterator[int]:
    """A TLS listener with the federation's SuperLink certificate (accepts handshakes until teardown)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(fed.server_cert, fed.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_check_coordinator_verifies_the_kit_ca(fed: Federation, tls_server: int, tmp_path: Path) -> None:
    node.check_coordinator(f"127.0.0.1:{tls_server}", fed.sites["H1"].ca_cert, timeout=5)
    node.check_coordinator(f"localhost:{tls_server}", fed.sites["H1"].ca_cert, timeout=5)
    foreign = provision(tmp_path / "other", ["H1"], sans=["127.0.0.1"])
    with pytest.raises(ConfigError, match="not the one this kit trusts"):
        node.check_coordinator(f"127.0.0.1:{tls_server}", foreign.sites["H1"].ca_cert, timeout=5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=r"unreachable .*outbound TCP port"):
        node.check_coordinator(f"127.0.0.1:{closed}", fed.sites["H1"].ca_cert, timeout=5)


def test_site_and_coordinator_share_one_tls_probe(fed: Federation, tls_server: int, tmp_path: Path) -> None:
    """`fedward coordinator start` waits with the same handshake the site checks with."""
    ca = fed.sites["H1"].ca_cert
    foreign = provision(tmp_path / "other", ["H1"], sans=["127.0.0.1"]).sites["H1"].ca_cert
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert superlink.tls_reachable(f"127.0.0.1:{tls_server}", ca)
    assert not superlink.tls_reachable(f"127.0.0.1:{tls_server}", foreign)
    assert not superlink.tls_reachable(f"127.0.0.1:{closed}", ca)
    for bad in (tmp_path / "missing.pem", fed.server_key):
        with pytest.raises(ConfigError, match=rf"CA certificate {bad}: cannot be read"):
            tls_handshake(f"127.0.0.1:{tls_server}", bad, timeout=5)
        with pytest.raises(ConfigError, match="CA certificate"):
            node.check_coordinator(f"127.0.0.1:{tls_server}", bad, timeout=5)


def test_explain_exit_reads_flowers_logged_exit_code(fed: Federation, data: Path, tmp_path: Path) -> None:
    plan = node.prepare_node(
        fed.sites["H1"].dir, data, load_site_kit, state=tmp_path / "state", policy=_policy(tmp_path)
    )
    refused = ["ERROR : Exit Code: 305\n", "[code: 2004] Failed to activate SuperNode.\n"]
    assert "register H1.pub" in str(node.explain_exit(1, refused, plan))
    assert "could not reach" in str(node.explain_exit(1, ["Exit Code: 305\n"], plan))
    assert node.explain_exit(0, [], plan) is None
    assert node.explain_exit(-15, [], plan) is None
    assert node.explain_exit(1, ["INFO: shutting down\n"], plan) is None  # graceful exit on SIGINT
    assert "exited with code 7" in str(node.explain_exit(7, [], plan))


def test_site_start_prints_one_line_for_an_incomplete_kit(
    fed: Federation, data: Path, tmp_path: Path
) -> None:
    os.chmod(fed.sites["H1"].private_key, 0o644)
    done = subprocess.run(
        [FEDWARD, "site", "start", "--kit", str(fed.sites["H1"].dir), "--data", str(data)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "readable by other accounts" in done.stderr and "Traceback" not in done.stderr
