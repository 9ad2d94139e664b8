"""Running a hospital's SuperNode from its site kit: checks first, then `flower-supernode` in process
isolation beside fedward's SuperExec, which runs only app bundles signed by the federation
(client/app_gate.py).

Before anything connects, the data folder, the site policy, the state folder and a TLS handshake with
the coordinator (verified against the kit's CA) are checked, so the usual mistakes end in one clear
sentence instead of a Flower retry loop. The kit itself is read by a loader the caller passes in
(`server.deployment.provision.load_site_kit`; `client` does not import `server`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedward.client.policy import SitePolicy, load_policy, validate_policy_for
from fedward.common.errors import ConfigError, FedwardError
from fedward.common.tls_probe import split_address, tls_handshake
from fedward.common.tomlfile import read_toml

RUNTIME_PORT = 9094
"""The SuperNode's local Runtime API port (Flower's default); only its SuperExec connects to it."""
GRACEFUL_EXITS = (0, 1, 2, 3)  # Flower's SUCCESS and GRACEFUL_EXIT_{SIGINT,SIGQUIT,SIGTERM}
EXIT_AUTH_KEY_INVALID = 302  # Flower's ExitCode.SUPERNODE_NODE_AUTH_KEY_INVALID
EXIT_CONNECTION_ERROR = 305  # Flower's ExitCode.SUPERNODE_CONNECTION_ERROR
API_NODE_NOT_REGISTERED = 2004  # the SuperLink's ApiError when it does not know the node's key
_LOGGED_EXIT = re.compile(r"Exit Code: (\d+)")
_README_ADDRESS = re.compile(r"outbound HTTPS to the coordinator at `([^`\s]+:\d+)`")
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


class Kit(Protocol):
    """What the node needs from a site kit (server.deployment.provision.SiteKit satisfies it)."""

    @property
    def site(self) -> str: ...
    @property
    def dir(self) -> Path: ...
    @property
    def ca_cert(self) -> Path: ...
    @property
    def private_key(self) -> Path: ...
    @property
    def public_key(self) -> Path: ...
    @property
    def node_config(self) -> Path: ...
    @property
    def app_key(self) -> Path: ...


KitLoader = Callable[[Path], Kit]


@dataclass(frozen=True)
class NodePlan:
    """Everything checked and resolved before the SuperNode starts."""

    site: str
    superlink: str
    kit: Kit
    data_dir: Path
    policy_file: Path
    policy: SitePolicy
    state_dir: Path
    node_config_file: Path
    training_samples: int | None  # known for a CKD folder with train.csv


# ----------------------------------------------------------------------------- checks


def check_data_dir(data: Path, allowed_tasks: list[str]) -> int | None:
    """The data folder exists, is readable and not empty; a CKD-only site's CSVs follow the schema.

    Returns the number of training rows when it is known (CKD train.csv), else None.
    """
    if not data.exists():
        raise ConfigError(f"data folder {data} does not exist")
    if not data.is_dir():
        raise ConfigError(f"{data} is not a folder (--data expects the folder with the site's data)")
    if not os.access(data, os.R_OK | os.X_OK):
        raise ConfigError(f"data folder {data} is not readable by this account")
    if not any(not p.name.startswith(".") for p in data.iterdir()):
        raise ConfigError(f"data folder {data} is empty")
    if allowed_tasks != ["ckd"]:
        return None  # imaging folders are checked file by file when a run loads them
    from fedward.common.data.ckd import find_site_csv, load_ckd_csv
    from fedward.common.data.ckd_mapping import find_site_mapping, load_mapping

    mapping_file = find_site_mapping(data)
    mapping = load_mapping(mapping_file) if mapping_file else None
    first, test = find_site_csv(data)
    rows = len(load_ckd_csv(first, strict=False, mapping=mapping))
    if test is None:
        return None  # the run's test-fraction decides how many rows train
    load_ckd_csv(test, strict=False, mapping=mapping)
    return rows


def check_state_dir(state: Path) -> None:
    """Create the state folder (mode 0700) and make sure this account can write there."""
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=state, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"state folder {state}: not writable ({exc.strerror or exc})") from exc


def superlink_address(kit: Kit, given: str | None) -> str:
    """`--superlink`, or the coordinator address the kit's README names; checked to be HOST:PORT."""
    address = given
    if address is None:
        readme = kit.dir / "README.md"
        found = _README_ADDRESS.search(readme.read_text(errors="replace")) if readme.is_file() else None
        if found is None:
            raise ConfigError(
                f"give the coordinator's address with --superlink HOST:PORT (not found in {readme})"
            )
        address = found.group(1)
    match = _ADDRESS.fullmatch(address.strip())
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"coordinator address {address!r}: expected HOST:PORT, e.g. fl.example.org:8000")
    return address.strip()


def check_coordinator(address: str, ca_cert: Path, timeout: float = 10.0) -> None:
    """Open a TLS connection to the coordinator, verified with the kit's CA; raise a clear error if not."""
    host, port = split_address(address)
    try:
        tls_handshake(address, ca_cert, timeout)
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"the coordinator at {address} is not the one this kit trusts ({exc.verify_message}): "
            f"its certificate is not signed by {ca_cert} for the name {host!r}. The kit may belong to "
            "another federation or be out of date; ask the coordinator for the current kit"
        ) from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS with the coordinator at {address} failed ({exc.reason or exc})") from exc
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve the coordinator's name {host!r} ({exc.strerror})") from exc
    except (TimeoutError, OSError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"the coordinator at {address} is unreachable ({reason}): check that its SuperLink runs "
            f"and that outbound TCP port {port} to {host} is open"
        ) from exc


def prepare_node(
    kit_dir: Path,
    data: Path,
    load_kit: KitLoader,
    *,
    state: Path | None = None,
    policy: Path | None = None,
    superlink: str | None = None,
) -> NodePlan:
    """Check kit, data, policy and state folder (nothing connects yet) and write the node config
    the SuperNode passes to the ClientApp: `<state>/node-config.toml`."""
    kit = load_kit(Path(kit_dir))
    defaults = read_toml(kit.node_config, "site kit node config")
    policy_file = Path(policy).expanduser().resolve() if policy else _kit_path(kit, defaults["policy-file"])
    if not policy_file.is_file():
        raise ConfigError(
            f"site policy {policy_file} does not exist: write one (see docs/privacy.md, 'The site policy') "
            "and pass it with --policy, or set policy-file in the kit's node-config.toml"
        )
    site_policy = load_policy(policy_file)
    data_dir = Path(data).expanduser().resolve()
    samples = check_data_dir(data_dir, list(site_policy.allowed_tasks))
    if samples is not None:
        validate_policy_for(site_policy, samples)
    state_dir = Path(state).expanduser().resolve() if state else _kit_path(kit, defaults["state-dir"])
    check_state_dir(state_dir)
    address = superlink_address(kit, superlink)
    values = {
        "site-id": kit.site,
        "data-dir": str(data_dir),
        "policy-file": str(policy_file),
        "state-dir": str(state_dir),
    }
    node_config = state_dir / "node-config.toml"
    node_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return NodePlan(
        site=kit.site,
        superlink=address,
        kit=kit,
        data_dir=data_dir,
        policy_file=policy_file,
        policy=site_policy,
        state_dir=state_dir,
        node_config_file=node_config,
        training_samples=samples,
    )


def _kit_path(kit: Kit, value: object) -> Path:
    """A path from the kit's node-config.toml; a relative one is relative to the kit folder."""
    path = Path(str(value)).expanduser()
    return (path if path.is_absolute() else kit.dir / path).resolve()


# ----------------------------------------------------------------------------- the SuperNode


def flower_tool(name: str) -> str:
    """Path of a Flower program installed next to this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FedwardError(f"'{name}' not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def supernode_command(
    plan: NodePlan,
    *,
    host: str = "127.0.0.1",
    port: int = RUNTIME_PORT,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> list[str]:
    """`flower-supernode` with the kit's CA and key and the checked node config, in process isolation:
    it runs no app itself and starts no SuperExec of its own (Flower's would run any bundle); fedward's
    gated SuperExec (`superexec_command`) runs the ClientApps."""
    command = [
        flower_tool("flower-supernode"),
        "--root-certificates", str(plan.kit.ca_cert),
        "--auth-supernode-private-key", str(plan.kit.private_key),
        "--superlink", plan.superlink,
        "--node-config", str(plan.node_config_file),
        "--isolation", "process",
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", f"{max_wait_time:g}"]
    return command


def superexec_command(
    plan: NodePlan, *, port: int = RUNTIME_PORT, parent_pid: int | None = None
) -> list[str]:
    """`fedward site superexec` for the SuperNode's Runtime API on 127.0.0.1:`port` (plain HTTP on the
    loopback, as Flower's own SuperExec in subprocess isolation), gated by the kit's app-signing key
    and the site policy; it stops when `parent_pid` (this `site start`) does."""
    command = [
        flower_tool("fedward"), "site", "superexec",
        "--app-key", str(plan.kit.app_key),
        "--policy", str(plan.policy_file),
        "--runtime-api-address", f"127.0.0.1:{port}",
        "--insecure",
    ]  # fmt: skip
    if parent_pid is not None:
        command += ["--parent-pid", str(parent_pid)]
    return command


def node_env(plan: NodePlan) -> dict[str, str]:
    """FLWR_HOME in the state folder (installed app bundles); this Python's tools first on PATH."""
    home = plan.state_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def run_supernode(
    command: list[str], env: dict[str, str], superexec: list[str] | None = None
) -> tuple[int, list[str]]:
    """Run the SuperNode (same process group), echo its output, forward SIGTERM/SIGINT once; with
    `superexec`, also run that beside it (its output goes straight to ours) and stop it afterwards.

    Returns the SuperNode's exit code and the last lines of its output.
    """
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    gate = subprocess.Popen(superexec, env=env) if superexec else None
    tail: collections.deque[str] = collections.deque(maxlen=60)
    forwarded = False

    def forward(_signum: int, _frame: Any) -> None:
        nonlocal forwarded
        if not forwarded and proc.poll() is None:
            forwarded = True
            proc.send_signal(signal.SIGTERM)
            if gate is not None and gate.poll() is None:
                gate.send_signal(signal.SIGTERM)

    def echo() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    # Wait for the SuperNode first, then for the rest of its output (a child of it may hold the pipe).
    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
        reader.join(timeout=15)
        return code, list(tail)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if gate is not None and gate.poll() is None:
            gate.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                gate.wait(timeout=10)
        for child in (proc, gate):
            if child is not None and child.poll() is None:
                child.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)


def explain_exit(code: int, output: list[str], plan: NodePlan) -> str | None:
    """A sentence for hospital IT when the SuperNode stopped on its own (None for a normal stop).

    Flower logs `Exit Code: N` but the process may end with another code (seen: 1 for 305), so
    the logged code wins.
    """
    text = "".join(output)
    logged = _LOGGED_EXIT.findall(text)
    flower = int(logged[-1]) if logged else code
    if flower in GRACEFUL_EXITS or flower < 0:
        return None
    if flower == EXIT_CONNECTION_ERROR and f"[code: {API_NODE_NOT_REGISTERED}]" in text:
        return (
            f"the coordinator does not accept the key of site {plan.site}: ask the coordinator to register "
            f"{plan.kit.public_key.name} (`fedward coordinator register`) and compare the key fingerprint"
        )
    if flower == EXIT_CONNECTION_ERROR and any(w in text for w in ("CERTIFICATE", "certificate", "SSL")):
        return f"TLS with the coordinator at {plan.superlink} failed; the kit's ca.crt may be out of date"
    if flower == EXIT_CONNECTION_ERROR:
        return f"could not reach the coordinator at {plan.superlink} (Flower gave up retrying)"
    if flower == EXIT_AUTH_KEY_INVALID:
        return f"{plan.kit.private_key} is not a valid SuperNode key"
    return f"flower-supernode exited with code {flower}"
