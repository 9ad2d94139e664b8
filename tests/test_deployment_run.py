"""A whole provisioned federation on 127.0.0.1 through the fedward commands hospital IT and the
coordinator run: `coordinator start` (TLS + SuperNode auth), two `site start`, `fedward run` (CKD,
signed); then a foreign app and a tampered signed one, both refused at every site (client/app_gate.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flower_processes import Procs, free_port, require_nginx, wait_for
from site_policy import policy_text
from test_app_signing import tamper, write_app

from common.app_signature import load_private_key, sign_app
from server.deployment import launch, superlink
from server.deployment.provision import provision
from simulations.prepare import prepare_ckd_sites

BIN = Path(sys.executable).parent
FEDWARD = str(BIN / "fedward")
POLICY = policy_text(50.0)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="Flower CLIs not installed"),
]


@pytest.fixture()
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Every process group started by the test dies at teardown."""
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def test_provisioned_federation_runs_ckd_and_rejects_a_foreign_kit(tmp_path: Path, procs: Procs) -> None:
    require_nginx()  # the coordinator's TLS proxy
    started = time.monotonic()
    port = free_port()
    fed = provision(tmp_path / "federation", ["H1", "H2"], sans=["127.0.0.1"], port=port, name="deployfed")
    foreign = provision(tmp_path / "other", ["H1"], sans=["127.0.0.1"], port=port, name="other")
    data = prepare_ckd_sites(tmp_path / "data", 2, "iid")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    runs = tmp_path / "runs"

    _, coordinator_log = procs.start(
        "coordinator", [FEDWARD, "coordinator", "start", "--federation", str(fed.root), "--host", "127.0.0.1"]
    )
    logs = [coordinator_log]
    wait_for("the coordinator", lambda: "coordinator ready" in coordinator_log.read_text(), 60, logs)
    assert "site H1: registered as node" in coordinator_log.read_text()
    ready = time.monotonic()

    def site(name: str, kit: Path, folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
        return procs.start(
            name,
            [
                FEDWARD, "site", "start", "--kit", str(kit), "--data", str(folder),
                "--state", str(tmp_path / f"state-{name}"), "--policy", str(policy),
                "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
            ],
        )  # fmt: skip

    for name, folder in zip(("H1", "H2"), data, strict=True):
        logs.append(site(name, fed.sites[name].dir, folder)[1])
    intruder, intruder_log = site("foreign", foreign.sites["H1"].dir, data[0])
    run, run_log = procs.start(
        "run",
        [
            FEDWARD, "run", "--federation", str(fed.root), "--poll", "2", "--timeout", "240",
            "-c", "num-server-rounds=2 min-sites=2 dp-accountant=\"rdp\"",
            "-c", f'runs-dir="{runs}" run-name="deploy"',
        ],
    )  # fmt: skip
    logs.append(run_log)

    # a kit from another federation stops before connecting, with one sentence and no traceback
    assert intruder.wait(timeout=60) == 2
    message = intruder_log.read_text()
    assert "is not the one this kit trusts" in message and "Traceback" not in message

    # registering again is harmless
    again = subprocess.run(
        [FEDWARD, "coordinator", "register", "--federation", str(fed.root)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("key already known to the SuperLink") == 2

    # an outsider with a site kit's CA certificate (every kit has it) reaches the Fleet API only: the
    # proxy refuses submitting a foreign app, listing runs and nodes, and (un)registering SuperNodes
    attacker = tmp_path / "attacker-home"
    attacker.mkdir()
    (attacker / "config.toml").write_text(
        f'[superlink]\ndefault = "deployfed"\n\n[superlink.deployfed]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{fed.sites["H1"].ca_cert}"\n'
    )
    files = superlink.load_federation(fed.root)
    with superlink.operator_home(files) as home:
        node_ids = [
            n["node-id"] for n in superlink.flwr_json(["supernode", "list", "deployfed"], home)["nodes"]
        ]
    mallory = write_app(tmp_path / "mallory", "malloryapp")
    for args in (
        ["run", str(mallory), "deployfed"],
        ["ls", "deployfed"],
        ["supernode", "list", "deployfed"],
        ["supernode", "unregister", node_ids[0], "deployfed"],
        ["supernode", "register", str(foreign.site_public_keys["H1"]), "deployfed"],
    ):
        reply = superlink.flwr_json(args, attacker)
        assert reply["success"] is False and "403 Forbidden" in reply["error-message"], (args, reply)

    wait_for("the run to end", lambda: run.poll() is not None, 240, logs)
    output = run_log.read_text()
    assert run.returncode == 0, output + "\n".join(p.read_text()[-3000:] for p in logs)
    run_id = int(re.search(r"run (\d+) submitted", output).group(1))  # type: ignore[union-attr]

    # the outcome, checked independently: Flower's run status and the run directory
    with superlink.operator_home(superlink.load_federation(fed.root)) as home:
        status = launch.run_status(superlink.load_federation(fed.root), home, run_id)
    assert status["status"] == "finished:completed"
    summary = json.loads((runs / "deploy" / "summary.json").read_text())
    assert summary["rounds-completed"] == 2 and summary["stopped"] is None
    assert sorted(summary["sites"]) == ["H1", "H2"]
    assert all(s["epsilon"] is not None and s["epsilon"] > 0 for s in summary["sites"].values())
    assert "signed with the federation's app-signing key" in output
    for name in ("H1", "H2"):
        assert "verified app fedward/fedward" in (tmp_path / f"{name}.log").read_text()

    # a foreign app (unsigned) and the federation's signature on a bundle changed by one byte after
    # signing: both refused at every site before any of their code runs, the reason at the coordinator
    outsider = write_app(tmp_path / "outsider")
    altered = sign_app(
        write_app(tmp_path / "altered", "alteredapp"),
        load_private_key(fed.app_signing_key),
        tmp_path / "signed",
    )
    tamper(altered.dir / "alteredapp_pkg" / "client.py")
    outs = {"unsigned": tmp_path / "unsigned.json", "tampered": tmp_path / "tampered.json"}
    files = superlink.load_federation(fed.root)
    with superlink.operator_home(files) as home:
        launch.submit_run(files, home, outsider, {"out": str(outs["unsigned"])})
        launch.submit_run(files, home, altered.dir, {"out": str(outs["tampered"])})
    wait_for("the two bundles' ServerApps", lambda: all(o.exists() for o in outs.values()), 120, logs)
    for code, out in outs.items():
        reasons = json.loads(out.read_text())
        assert len(reasons) == 2 and all(f"refused the app bundle [{code}]" in r for r in reasons), reasons
    assert not list(tmp_path.rglob("PWNED"))  # no foreign code ran at any site
    for name in ("H1", "H2"):
        site_log = (tmp_path / f"{name}.log").read_text()
        assert "REFUSED app bundle foreignapp-org/foreignapp" in site_log and "[unsigned]" in site_log
        assert "REFUSED app bundle alteredapp-org/alteredapp" in site_log and "[tampered]" in site_log

    # nothing of the outsider's ran; only the operator unregisters a site, and re-admitting it gives it
    # a new key (Flower 1.42 never re-admits an unregistered one) with which the site is back online
    with superlink.operator_home(files) as home:
        assert "malloryapp" not in json.dumps(superlink.flwr_json(["ls", "deployfed"], home))
        listed = {
            n["node-id"]: n["status"]
            for n in superlink.flwr_json(["supernode", "list", "deployfed"], home)["nodes"]
        }
        assert set(node_ids) <= set(listed) and "unregistered" not in listed.values()
        h2 = re.search(r"site H2: registered as node (\d+)", coordinator_log.read_text()).group(1)  # type: ignore[union-attr]
        assert superlink.flwr_json(["supernode", "unregister", h2, "deployfed"], home)["success"] is True
    old_key = fed.sites["H2"].private_key.read_bytes()
    readmit = subprocess.run(
        [FEDWARD, "coordinator", "register", "--federation", str(fed.root)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert readmit.returncode == 0, readmit.stdout + readmit.stderr
    assert "site H1: key already known" in readmit.stdout and "NEW key" in readmit.stdout
    new_id = re.search(r"site H2: registered as node (\d+)", readmit.stdout).group(1)  # type: ignore[union-attr]
    assert fed.sites["H2"].private_key.read_bytes() != old_key
    logs.append(site("H2-again", fed.sites["H2"].dir, data[1])[1])

    def h2_online() -> bool:
        with superlink.operator_home(files) as home:
            nodes = superlink.flwr_json(["supernode", "list", "deployfed"], home)["nodes"]
        return {n["node-id"]: n["status"] for n in nodes}.get(new_id) == "online"

    wait_for("H2 back online with its new key", h2_online, 90, logs)
    print(f"coordinator ready after {ready - started:.1f} s, whole test {time.monotonic() - started:.1f} s")
