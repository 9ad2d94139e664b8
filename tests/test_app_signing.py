"""App bundle signing (common/app_signature.py) on real FABs built by Flower, the app-signing key in
provisioning, and the site policy's allowed-apps. The gate with real processes: test_deployment_run.py."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk

from fedward.client.app_gate import Gate, GatedExecutor, _bundle_packages
from fedward.client.policy import load_policy
from fedward.common.app_signature import (
    APP_PUBLIC_KEY,
    APP_SIGNING_KEY,
    SIGNATURE_FILE,
    AppRefused,
    load_private_key,
    load_public_key,
    sign_app,
    verify_fab,
)
from fedward.common.errors import ConfigError
from fedward.server.deployment.provision import load_site_kit, provision

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = ["flwr>=1.42.0"]

[tool.flwr.app]
publisher = "{name}-org"

[tool.flwr.app.components]
serverapp = "{name}_pkg.server:app"
clientapp = "{name}_pkg.client:app"

[tool.flwr.app.config]
out = ""
"""
SERVER = '''"""Sends one message to every site and writes what came back (error reasons) to `out`."""
import json
from pathlib import Path

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    nodes = list(grid.get_node_ids())
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=120))
    reasons = [r.error.reason if r.has_error() else "ran" for r in replies]
    Path(str(context.run_config["out"])).write_text(json.dumps(reasons))
'''
CLIENT = '''"""What an outsider would run at a hospital: read its data, leave a mark, send a row back."""
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context) -> Message:
    data = Path(str(context.node_config["data-dir"]))
    (data / "PWNED").write_text("foreign code ran here")
    row = next(iter(sorted(data.glob("*.csv")))).read_text().splitlines()[1]
    return Message(RecordDict({"row": ConfigRecord({"row": row})}), reply_to=msg)
'''


def write_app(folder: Path, name: str = "foreignapp") -> Path:
    """A tiny Flower app (ServerApp + ClientApp) in `folder/<name>`; its ClientApp writes PWNED into the
    site's data folder and returns a patient row."""
    app = folder / name
    package = app / f"{name}_pkg"
    package.mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text(SERVER)
    (package / "client.py").write_text(CLIENT)
    return app


def tamper(py_file: Path) -> None:
    """Change one byte of a signed file."""
    content = bytearray(py_file.read_bytes())
    content[0] = ord("#") if content[0] != ord("#") else ord(" ")
    py_file.write_bytes(bytes(content))


@pytest.fixture()
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_a_signed_bundle_verifies_and_any_change_is_refused(tmp_path: Path, key) -> None:
    app = write_app(tmp_path / "src")
    signed = sign_app(app, key, tmp_path / "staging")
    assert signed.dir.name == "foreignapp" and (signed.dir / SIGNATURE_FILE).is_file()
    assert not (app / SIGNATURE_FILE).exists()  # the source folder is left alone
    fab = build_fab_from_disk(signed.dir)  # what `flwr run` ships
    identity = verify_fab(fab, key.public_key())
    assert (identity.name, identity.version, identity.digest) == (
        "foreignapp",
        "1.0.0",
        signed.identity.digest,
    )
    assert identity.fab_hash == hashlib.sha256(fab).hexdigest()
    assert _bundle_packages(fab) == {"foreignapp_pkg"}

    with pytest.raises(AppRefused, match="carries no") as unsigned:
        verify_fab(build_fab_from_disk(app), key.public_key())
    assert unsigned.value.code == "unsigned"
    with pytest.raises(AppRefused, match="not signed by this federation") as other:
        verify_fab(fab, ed25519.Ed25519PrivateKey.generate().public_key())
    assert other.value.code == "bad-signature"

    client_py = signed.dir / "foreignapp_pkg" / "client.py"
    original = client_py.read_bytes()
    tamper(client_py)
    with pytest.raises(AppRefused, match=r"changed: foreignapp_pkg/client\.py") as changed:
        verify_fab(build_fab_from_disk(signed.dir), key.public_key())
    assert changed.value.code == "tampered"
    client_py.write_bytes(original)
    verify_fab(build_fab_from_disk(signed.dir), key.public_key())
    (signed.dir / "foreignapp_pkg" / "extra.py").write_text("print('not signed')\n")
    with pytest.raises(AppRefused, match=r"added: foreignapp_pkg/extra\.py"):
        verify_fab(build_fab_from_disk(signed.dir), key.public_key())


def test_the_allow_list_names_versions_or_digests(tmp_path: Path, key) -> None:
    signed = sign_app(write_app(tmp_path / "src"), key, tmp_path / "staging")
    fab = build_fab_from_disk(signed.dir)
    digest = signed.identity.digest
    for allowed in (
        ["foreignapp==1.0.0"],
        [f"sha256:{digest}"],
        [f"sha256:{hashlib.sha256(fab).hexdigest()}"],
    ):
        verify_fab(fab, key.public_key(), allowed=allowed)
    with pytest.raises(AppRefused, match="not in the site's allowed-apps") as refused:
        verify_fab(fab, key.public_key(), allowed=["foreignapp==2.0.0", "sha256:" + "0" * 64])
    assert refused.value.code == "not-allowed"


def test_provision_makes_the_app_signing_key_and_puts_its_public_half_in_every_kit(tmp_path: Path) -> None:
    fed = provision(tmp_path / "fed", ["H1", "H2"], sans=["127.0.0.1"], name="signfed")
    private = fed.coordinator / APP_SIGNING_KEY
    assert fed.app_signing_key == private
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = load_private_key(private).public_key()
    for site in ("H1", "H2"):
        kit = load_site_kit(fed.sites[site].dir)
        assert kit.app_key == fed.sites[site].dir / APP_PUBLIC_KEY
        assert load_public_key(kit.app_key) == public
    fed.sites["H1"].app_key.unlink()
    with pytest.raises(ConfigError, match=r"app-signing-ed25519\.pub: missing from the site kit"):
        load_site_kit(fed.sites["H1"].dir)


def test_the_gate_reads_the_kit_key_and_the_policy(tmp_path: Path, key) -> None:
    fed = provision(tmp_path / "fed", ["H1"], sans=["127.0.0.1"], name="gatefed")
    signed = sign_app(write_app(tmp_path / "src"), load_private_key(fed.app_signing_key), tmp_path / "s")
    fab = build_fab_from_disk(signed.dir)
    policy = tmp_path / "policy.toml"
    base = (
        "[policy]\nepsilon-cap = 8.0\ndelta = 1e-5\nclipping-min = 0.1\nclipping-max = 5.0\n"
        'allowed-tasks = ["ckd"]\nmin-samples = 10\n'
    )
    policy.write_text(base)
    gate = Gate(fed.sites["H1"].app_key, policy)
    assert gate.check(fab).name == "foreignapp"
    policy.write_text(base + 'allowed-apps = ["fedward==0.1.0"]\n')
    with pytest.raises(AppRefused, match="allowed-apps"):
        gate.check(fab)
    policy.write_text(base + 'allowed-apps = ["fedward"]\n')
    with pytest.raises(ConfigError, match=r"policy\.allowed-apps\.0"):
        load_policy(policy)
    with pytest.raises(AppRefused, match="cannot check app bundles") as broken:
        gate.check(fab)
    assert broken.value.code == "site-config"
    with pytest.raises(AppRefused, match="cannot check app bundles"):
        Gate(tmp_path / "missing.pub").check(fab)


def test_every_site_superexec_in_the_compose_files_is_the_gated_one() -> None:
    docker = Path(__file__).resolve().parent.parent / "docker"
    site_execs = 0
    for path in sorted(docker.glob("*.yml")):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            command = [str(c) for c in service.get("command", [])]
            if "--runtime-api-address" not in command:
                continue
            address = command[command.index("--runtime-api-address") + 1]
            if address.startswith("superlink:"):
                continue  # the coordinator's ServerApp SuperExec
            site_execs += 1
            assert service.get("entrypoint") == ["fedward"], (path.name, name)
            assert command[:2] == ["site", "superexec"] and "--app-key" in command, (path.name, name)
            key = command[command.index("--app-key") + 1]
            assert key.endswith("/" + APP_PUBLIC_KEY), (path.name, name)
            assert not any(v.split(":")[1].endswith(".key") for v in service.get("volumes", [])), name
    assert site_execs == 3  # hospital.yml, and the demo's two hospitals


def test_the_site_superexec_forks_each_task_from_a_warm_worker_that_imported_torch(tmp_path: Path) -> None:
    """Each ClientApp task is still its own gated process, but forked from a worker that has imported
    torch once, not a fresh interpreter paying the import per message (issue: deployed round time)."""
    executor = GatedExecutor(Gate(tmp_path / "app.pub"))
    worker = executor.worker_pid()
    assert worker is not None
    task = executor.start_task(["--no-such-option"])  # the gate's own argument parser refuses it
    task.join(timeout=60)  # served once the worker has imported what it preloads
    assert task.exitcode == 2
    assert "libtorch" in Path(f"/proc/{worker}/maps").read_text()  # torch: imported in the worker
    second = executor.start_task(["--runtime-api-address"])  # the worker serves task after task
    second.join(timeout=60)
    assert second.exitcode == 2 and executor.worker_pid() == worker
