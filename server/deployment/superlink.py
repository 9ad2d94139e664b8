"""Running a provisioned federation for real: the SuperLink, the `flwr` CLI and site registration.

Everything goes through Flower's own programs (`flower-superlink`, `flwr`), with a Flower CLI home
(`FLWR_HOME`) that holds only the federation's profile, written afresh from the provisioned folder.
`flwr` with `--format json` exits 0 even when it fails, so every answer's "success" is checked.
The SuperLink listens on 127.0.0.1 only; the public address is nginx's (proxy.py), which serves
the Control API only to the operator's client certificate. Launching runs is in launch.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedward.common.errors import ConfigError, FedwardError
from fedward.common.tls_probe import tls_handshake
from fedward.common.tomlfile import read_toml
from fedward.server.deployment import proxy
from fedward.server.deployment.provision import (
    OPERATOR_CERT,
    OPERATOR_KEY,
    rotate_site_key,
    writable_by_others,
)

ALREADY_REGISTERED = "Public key already in use"
"""What the SuperLink answers (error code 23) when a key is registered a second time."""


@dataclass(frozen=True)
class CoordinatorFiles:
    """The coordinator's side of a provisioned federation folder (see server/deployment/provision.py)."""

    root: Path
    name: str
    address: str
    ca_cert: Path
    server_cert: Path
    server_key: Path
    public_keys: dict[str, Path]
    operator_cert: Path | None = None
    operator_key: Path | None = None

    @property
    def port(self) -> int:
        """The port of the provisioned address (the SuperLink's single HTTPS port)."""
        return int(self.address.rsplit(":", 1)[1])


def load_federation(folder: Path) -> CoordinatorFiles:
    """Read and check what the coordinator needs from a provisioned federation folder."""
    root = Path(folder).expanduser().resolve()
    coordinator = root / "coordinator"
    if not coordinator.is_dir():
        raise ConfigError(
            f"{root}: not a provisioned federation (no coordinator/ folder); run `fedward provision`"
        )
    paths = {n: coordinator / n for n in ("ca.crt", "superlink.crt", "superlink.key", "flwr-config.toml")}
    for path in paths.values():
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the federation folder")
    for key in (paths["superlink.key"], coordinator / OPERATOR_KEY):
        mode = stat.S_IMODE(key.stat().st_mode) if key.is_file() else 0
        if mode & 0o077:
            raise ConfigError(f"{key}: readable by other accounts (mode {mode:04o}); chmod 600 it")
    operator = coordinator / OPERATOR_CERT, coordinator / OPERATOR_KEY
    has_operator = all(p.is_file() for p in operator)
    profiles = read_toml(paths["flwr-config.toml"], "federation profile").get("superlink", {})
    named = {k: v for k, v in profiles.items() if isinstance(v, dict) and "address" in v}
    if len(named) != 1:
        raise ConfigError(f"{paths['flwr-config.toml']}: expected exactly one [superlink.<name>] profile")
    name, profile = next(iter(named.items()))
    try:
        ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
        x509.load_pem_x509_certificate(paths["superlink.crt"].read_bytes()).verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{paths['superlink.crt']}: not issued by {paths['ca.crt']} ({exc})") from exc
    keys = sorted((coordinator / "site-public-keys").glob("*.pub"))
    for path in (coordinator, coordinator / "site-public-keys", *keys):  # keys that get registered
        if (problem := writable_by_others(path)) and path.exists():
            raise ConfigError(f"{problem}: refusing to register site keys from it")
    return CoordinatorFiles(
        root=root,
        name=name,
        address=str(profile["address"]),
        ca_cert=paths["ca.crt"],
        server_cert=paths["superlink.crt"],
        server_key=paths["superlink.key"],
        public_keys={p.stem: p for p in keys},
        operator_cert=operator[0] if has_operator else None,
        operator_key=operator[1] if has_operator else None,
    )


# ----------------------------------------------------------------------------- Flower programs


def flower_tool(name: str) -> str:
    """Path of a Flower program installed next to this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FedwardError(f"'{name}' not found next to {sys.executable} or on PATH; is flwr installed?")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower programs: their own FLWR_HOME, this Python's tools first on PATH (the
    SuperLink and SuperNode start `flower-superexec` by name), no runtime dependency installation."""
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def local_address(host: str, port: int) -> str:
    """Where a process on this machine reaches a SuperLink listening on `host:port`."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_command(
    fed: CoordinatorFiles, *, host: str, port: int, state_dir: Path, isolation: str = "subprocess"
) -> list[str]:
    """`flower-superlink` with TLS, SuperNode authentication, an on-disk database and no `uv sync`."""
    return [
        flower_tool("flower-superlink"),
        "--ssl-ca-certfile", str(fed.ca_cert),
        "--ssl-certfile", str(fed.server_cert),
        "--ssl-keyfile", str(fed.server_key),
        "--enable-supernode-auth",
        "--database", str(state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
        "--isolation", isolation,
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Fail early (and clearly) when another program already listens on the SuperLink's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); is a SuperLink running?"
            ) from exc


def tls_reachable(address: str, ca_cert: Path, timeout: float = 3.0) -> bool:
    """True when `address` completes a TLS handshake verified against `ca_cert`."""
    try:
        tls_handshake(address, ca_cert, timeout)
    except OSError:  # ssl.SSLError included
        return False
    return True


def wait_until_serving(
    address: str, ca_cert: Path, proc: subprocess.Popen | None = None, timeout: float = 60.0
) -> None:
    """Wait for the SuperLink to answer TLS on `address`; fail if `proc` exits or it takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise FedwardError(f"flower-superlink exited with code {proc.returncode} before serving")
        if tls_reachable(address, ca_cert):
            return
        if time.monotonic() > deadline:
            raise FedwardError(f"the SuperLink did not answer on {address} within {timeout:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def cli_home(fed: CoordinatorFiles, address: str | None = None) -> Iterator[Path]:
    """A temporary FLWR_HOME whose config.toml holds the federation's profile (the default one)."""
    with tempfile.TemporaryDirectory(prefix="fedward-flwr-") as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{fed.name}"\n\n'
            f"[superlink.{fed.name}]\n"
            f"address = {json.dumps(address or fed.address)}\n"
            f"root-certificates = {json.dumps(str(fed.ca_cert))}\n"
        )
        yield home


@contextlib.contextmanager
def operator_home(fed: CoordinatorFiles, address: str | None = None) -> Iterator[Path]:
    """A FLWR_HOME from which `flwr` reaches the Control API as the operator: through an
    `proxy.OperatorTunnel` carrying the operator's client certificate to `address` (default: the
    provisioned one). A federation without an operator certificate gets `cli_home` as is."""
    if fed.operator_cert is None or fed.operator_key is None:
        with cli_home(fed, address) as home:
            yield home
        return
    target = address or fed.address
    with (
        proxy.operator_tunnel(target, fed.ca_cert, fed.operator_cert, fed.operator_key) as local,
        tempfile.TemporaryDirectory(prefix="fedward-flwr-") as tmp,
    ):
        home = Path(tmp)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{fed.name}"\n\n'
            f"[superlink.{fed.name}]\n"
            f"address = {json.dumps(local)}\n"
            "insecure = true  # plain HTTP to this process on 127.0.0.1; TLS + operator certificate beyond\n"
        )
        yield home


class NoJsonAnswer(FedwardError):
    """`flwr ... --format json` printed no JSON (it crashed or could not start)."""


def flwr_json(args: list[str], home: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Run `flwr <args> --format json` and return its answer (whose "success" the caller checks)."""
    try:
        done = subprocess.run(
            [flower_tool("flwr"), *args, "--format", "json"],
            env=flower_env(home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FedwardError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from exc
    start = done.stdout.find("{")
    if start >= 0:
        with contextlib.suppress(json.JSONDecodeError):
            return dict(json.loads(done.stdout[start:]))
    detail = (done.stderr or done.stdout).strip()[-800:]
    raise NoJsonAnswer(f"`flwr {' '.join(args)}` gave no JSON answer (exit code {done.returncode}): {detail}")


def failure(reply: dict[str, Any]) -> str:
    message = str(reply.get("error-message") or "no reason given")
    return message.split("\n\n", 1)[-1].strip()  # drop flwr's "Using SuperLink: ..." preamble


# ----------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Registration:
    """One site's key at the SuperLink after `register_sites`."""

    site: str
    node_id: str | None  # None when it was registered before (the SuperLink does not repeat the id)
    new: bool
    rekeyed: Path | None = None
    """The site's new private key when its old key had been unregistered (send it to the site)."""


KeyIsRevoked = Callable[[Path], bool]
"""Whether the SuperLink holds this public key (file) only as unregistered nodes."""


def register_sites(
    fed: CoordinatorFiles, home: Path, is_revoked: KeyIsRevoked | None = None
) -> list[Registration]:
    """Register every key in coordinator/site-public-keys with `flwr supernode register` (idempotent).

    Flower 1.42 keeps an unregistered node's key for good (a unique column; no API removes or reactivates
    it), so a site whose key was unregistered is re-admitted with a fresh key pair (`rotate_site_key`,
    written into its kit folder) whose public half is registered; `is_revoked` tells the two cases of
    "Public key already in use" apart (default: `revoked_keys` through the Control API).
    """
    if not fed.public_keys:
        raise ConfigError(f"{fed.root / 'coordinator' / 'site-public-keys'}: no site public keys (*.pub)")
    done: list[Registration] = []
    for site, key in fed.public_keys.items():
        reply = _register(fed, home, site, key)
        if reply.get("success") is True:
            done.append(Registration(site, str(reply.get("node-id")), new=True))
            continue
        if ALREADY_REGISTERED not in str(reply.get("error-message", "")):
            raise FedwardError(f"registering site {site} ({key}) failed: {failure(reply)}")
        revoked = is_revoked or (lambda path: path in revoked_keys(fed, home))
        if not revoked(key):
            done.append(Registration(site, None, new=False))
            continue
        private = rotate_site_key(fed.root, site, fed.name)
        reply = _register(fed, home, site, key)
        if reply.get("success") is not True:
            raise FedwardError(f"registering the new key of site {site} ({key}) failed: {failure(reply)}")
        done.append(Registration(site, str(reply.get("node-id")), new=True, rekeyed=private))
    return done


def _register(fed: CoordinatorFiles, home: Path, site: str, key: Path) -> dict[str, Any]:
    return retrying(lambda: flwr_json(["supernode", "register", str(key), fed.name, "--name", site], home))


def revoked_keys(fed: CoordinatorFiles, home: Path) -> set[Path]:
    """The site public key files the SuperLink knows only as unregistered nodes, read with Flower's own
    Control API client (`flwr supernode list --format json` leaves out the keys) at the address of
    `home`'s profile, as the operator."""
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.control import ControlHttpClient

    profile = read_toml(home / "config.toml", "Flower configuration")["superlink"][fed.name]
    insecure = bool(profile.get("insecure"))
    verify: ssl.SSLContext | bool = False
    if not insecure:
        verify = ssl.create_default_context(cafile=str(fed.ca_cert))
    scheme = "http" if insecure else "https"
    client = ControlHttpClient(f"{scheme}://{profile['address']}", verify=verify)
    try:
        nodes = client.ListNodes(ListNodesRequest()).nodes_info
    except Exception as exc:  # httpx errors; Flower's own error types
        raise FedwardError(f"cannot list the SuperLink's nodes at {profile['address']}: {exc}") from exc
    finally:
        client.close()
    live = {bytes(n.public_key) for n in nodes if n.status != "unregistered"}
    dead = {bytes(n.public_key) for n in nodes if n.status == "unregistered"} - live
    return {path for path in fed.public_keys.values() if _flower_key_bytes(path) in dead}


def _flower_key_bytes(path: Path) -> bytes:
    """A site's OpenSSH public key file as the SuperLink stores it (PEM SubjectPublicKeyInfo)."""
    key = serialization.load_ssh_public_key(path.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def retrying(call: Callable[[], dict[str, Any]], attempts: int = 3, pause: float = 2.0) -> dict[str, Any]:
    """Repeat an idempotent `flwr` call whose output was not JSON (seen once right after start-up)."""
    for attempt in range(attempts):
        try:
            return call()
        except NoJsonAnswer:
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- supervising a program


def supervise(
    command: list[str],
    env: dict[str, str],
    after_start: Callable[[subprocess.Popen], None],
    companions: Sequence[list[str]] = (),
) -> int:
    """Run `command` and its `companions` (e.g. the TLS proxy in front of the SuperLink) in this process
    group; SIGTERM/SIGINT reach each once; when one of them exits, the others are stopped. Returns the
    exit code of `command` (a companion that exited first is reported as a FedwardError).

    `after_start` runs while the programs run (e.g. readiness and registration); if it raises, they are
    stopped and the error propagates.
    """
    procs = [subprocess.Popen(command, env=env)]
    forwarded = False

    def forward(_signum: int, _frame: Any) -> None:
        nonlocal forwarded
        if not forwarded:
            forwarded = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            procs += [subprocess.Popen(c, env=env) for c in companions]
            after_start(procs[0])
            while all(proc.poll() is None for proc in procs):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[0].wait(timeout=0.5)
        except BaseException:
            forward(signal.SIGTERM, None)
            _reap(procs)
            raise
        ended = next(proc for proc in procs if proc.poll() is not None)
        asked = forwarded  # the programs were told to stop (SIGTERM/SIGINT to this process)
        forward(signal.SIGTERM, None)
        _reap(procs)
        if ended is not procs[0] and not asked:
            raise FedwardError(f"{Path(str(ended.args[0])).name} exited with code {ended.returncode}")
        return procs[0].returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reap(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
