"""A whole provisioned federation on 127.0.0.1 through the fedward commands hospital IT and the
coordinator run: `coordinator start` (TLS + SuperNode auth), three `site start`, `fedward run` (CKD,
signed) with secure aggregation, one site killed (SIGKILL to its process group) while its ClientApp
computes its masked update in round 2; then a foreign app and a tampered signed one, both refused at every
site (client/app_gate.py). One federation serves every check: each costs a minute of start-up.

Secure aggregation (issue 19): the survivors' shares of the dead site's mask key remove its pairwise masks
from their vectors; the run completes every round with the two survivors, signs its provenance with the
federation's key, and the dead site is sampled again (an error reply from the SuperLink) instead of the
federation waiting for it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flower_processes import Procs, free_port, require_nginx, wait_for
from safetensors.numpy import load_file
from site_policy import policy_text
from test_app_signing import tamper, write_app

from fedward.common.app_signature import load_private_key, sign_app
from fedward.common.secure_aggregation import COLLECT, STAGES
from fedward.server.deployment import launch, superlink
from fedward.server.deployment.provision import provision
from fedward.server.provenance.manifest import verify_run
from fedward.server.provenance.signing import SIGNING_KEY_ENV
from fedward.simulations.prepare import prepare_ckd_sites

BIN = Path(sys.executable).parent
FEDWARD = str(BIN / "fedward")
POLICY = policy_text(50.0)
SITES = ("H1", "H2", "H3")
ROUNDS = 2
KILLED, KILL_ROUND = "H3", 2
# the SuperNode logs each message it pulls; a secure-aggregation round sends every site one train
# message per stage, so this is the round's masked-vector (collect) message: the site has shared its keys
# and its ClientApp (a new process, seconds to start) is about to train and mask
KILL_AT = len(STAGES) * (KILL_ROUND - 1) + STAGES.index(COLLECT) + 1
RECEIVED_TRAIN = "Receiving: train message"

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


def test_provisioned_federation_runs_ckd_with_secure_aggregation_and_rejects_foreign_code(
    tmp_path: Path, procs: Procs
) -> None:
    require_nginx()  # the coordinator's TLS proxy
    started = time.monotonic()
    port = free_port()
    fed = provision(tmp_path / "federation", list(SITES), sans=["127.0.0.1"], port=port, name="deployfed")
    foreign = provision(tmp_path / "other", ["H1"], sans=["127.0.0.1"], port=port, name="other")
    data = prepare_ckd_sites(tmp_path / "data", len(SITES), "iid")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    runs = tmp_path / "runs"

    # the ServerApp signs with the federation's provenance key, as in a real deployment (not the
    # throwaway key conftest puts in the environment)
    coordinator_env = {k: v for k, v in os.environ.items() if k != SIGNING_KEY_ENV}
    _, coordinator_log = procs.start(
        "coordinator",
        [FEDWARD, "coordinator", "start", "--federation", str(fed.root), "--host", "127.0.0.1"],
        env=coordinator_env,
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

    sites = {}
    for name, folder in zip(SITES, data, strict=True):
        sites[name] = site(name, fed.sites[name].dir, folder)
        logs.append(sites[name][1])
    intruder, intruder_log = site("foreign", foreign.sites["H1"].dir, data[0])
    files = superlink.load_federation(fed.root)

    def all_online() -> bool:  # the run starts once min-sites are up: make sure all three are in it
        with superlink.operator_home(files) as home:
            nodes = superlink.flwr_json(["supernode", "list", fed.name], home)["nodes"]
        return sum(n["status"] == "online" for n in nodes) == len(SITES)

    wait_for("three sites online", all_online, 120, logs)
    run, run_log = procs.start(
        "run",
        [
            FEDWARD, "run", "--federation", str(fed.root), "--poll", "2", "--timeout", "600",
            "-c", f'num-server-rounds={ROUNDS} min-sites=2 dp-accountant="rdp" secure-aggregation=true',
            "-c", f'runs-dir="{runs}" run-name="deploy"',
        ],
    )  # fmt: skip
    logs.append(run_log)

    # the kill, on its own thread: the checks below run while the federation trains
    victim, victim_log = sites[KILLED]
    killed: list[float] = []

    def kill_in_round_two() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and run.poll() is None:
            if victim_log.read_text(errors="replace").count(RECEIVED_TRAIN) >= KILL_AT:
                os.killpg(victim.pid, signal.SIGKILL)  # a crash: no goodbye to the SuperLink, no reply
                killed.append(time.monotonic())
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_in_round_two, daemon=True)
    killer.start()

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
    assert again.stdout.count("key already known to the SuperLink") == len(SITES)

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

    wait_for("the run to end", lambda: run.poll() is not None, 600, logs)
    killer.join(timeout=10)
    output = run_log.read_text()
    assert run.returncode == 0, output + "\n".join(p.read_text()[-3000:] for p in logs)
    assert killed, f"{KILLED} was never killed: it received fewer than {KILL_AT} train messages"
    run_id = int(re.search(r"run (\d+) submitted", output).group(1))  # type: ignore[union-attr]

    # the outcome, checked independently: Flower's run status and the run directory
    with superlink.operator_home(superlink.load_federation(fed.root)) as home:
        status = launch.run_status(superlink.load_federation(fed.root), home, run_id)
    assert status["status"] == "finished:completed"
    run_dir = runs / "deploy"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds-completed"] == ROUNDS and summary["stopped"] is None
    assert summary["secure-aggregation"] is True
    assert sorted(summary["sites"]) == list(SITES)
    assert all(s["epsilon"] is not None and s["epsilon"] > 0 for s in summary["sites"].values())
    assert "signed with the federation's app-signing key" in output
    for name in SITES:
        assert "verified app fedward/fedward" in (tmp_path / f"{name}.log").read_text()
    assert fed.provenance_key is not None  # signed by the federation's provenance key
    verified = verify_run(run_dir, fed.provenance_key.with_suffix(".pub"))
    assert verified.problems == [], verified.problems

    # all three trained before the kill; after it, the round it hit and every later one holds the two
    # survivors only, and the dead site is named as a failure (not silently missing)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    survivors = sorted(set(SITES) - {KILLED})
    for record in records:
        trained = sorted(s for s, v in record["sites"].items() if v["train"])
        evaluated = sorted(s for s, v in record["sites"].items() if v["evaluate"])
        if record["round"] < KILL_ROUND:
            assert trained == evaluated == list(SITES), record
        else:
            assert trained == evaluated == survivors, record
            assert any(f.startswith(f"{KILLED}: ") for f in record["failures"]), record["failures"]
    assert f"fedward: {KILLED} did not train in round {KILL_ROUND}" in output

    # the masks cancelled: the aggregate is a model, not ring noise (a leftover mask decodes to values in
    # the thousands; these weights stay below 1)
    model = load_file(str(run_dir / "model.safetensors"))
    values = np.concatenate([v.ravel() for v in model.values()])
    assert np.isfinite(values).all() and np.abs(values).max() < 4.0

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
