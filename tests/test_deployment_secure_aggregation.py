"""Secure aggregation in a provisioned federation (issue 19): three `fedward site start` over TLS with
authenticated SuperNodes, a CKD run with `secure-aggregation = true`, and one site killed (SIGKILL to its
process group) while its ClientApp computes its masked update in round 2, after it has shared its keys.

The survivors' shares of the dead site's mask key remove its pairwise masks from their vectors; the run
completes every round with the two survivors, signs its provenance, and the dead site is sampled again
(an error reply from the SuperLink) instead of the federation waiting for it."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flower_processes import Procs, free_port, require_nginx, wait_for
from safetensors.numpy import load_file
from site_policy import policy_text

from common.secure_aggregation import COLLECT, STAGES
from server.deployment import superlink
from server.deployment.provision import provision
from server.provenance.manifest import verify_run
from server.provenance.signing import SIGNING_KEY_ENV
from simulations.prepare import prepare_ckd_sites

BIN = Path(sys.executable).parent
FEDWARD = str(BIN / "fedward")
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


def test_secure_aggregation_run_survives_a_site_killed_mid_round(tmp_path: Path, procs: Procs) -> None:
    require_nginx()  # the coordinator's TLS proxy
    started = time.monotonic()
    port = free_port()
    fed = provision(tmp_path / "federation", list(SITES), sans=["127.0.0.1"], port=port, name="secaggfed")
    data = prepare_ckd_sites(tmp_path / "data", len(SITES), "iid")
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(50.0))
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

    sites = {}
    for name, folder in zip(SITES, data, strict=True):
        sites[name] = procs.start(
            name,
            [
                FEDWARD, "site", "start", "--kit", str(fed.sites[name].dir), "--data", str(folder),
                "--state", str(tmp_path / f"state-{name}"), "--policy", str(policy),
                "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
            ],
        )  # fmt: skip
        logs.append(sites[name][1])
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
            "-c", f'runs-dir="{runs}" run-name="secagg"',
        ],
    )  # fmt: skip
    logs.append(run_log)

    victim, victim_log = sites[KILLED]
    wait_for(
        f"{KILLED} to receive its round-{KILL_ROUND} masked-vector message",
        lambda: victim_log.read_text(errors="replace").count(RECEIVED_TRAIN) >= KILL_AT,
        600,
        logs,
    )
    os.killpg(victim.pid, signal.SIGKILL)  # a crash: no goodbye to the SuperLink, no reply
    killed = time.monotonic()
    victim.wait(timeout=30)

    wait_for("the run to end", lambda: run.poll() is not None, 600, logs)
    output = run_log.read_text()
    assert run.returncode == 0, output + "\n".join(p.read_text()[-3000:] for p in logs)

    # every round completed, signed by the federation's provenance key
    run_dir = runs / "secagg"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds-completed"] == ROUNDS and summary["stopped"] is None
    assert fed.provenance_key is not None
    verified = verify_run(run_dir, fed.provenance_key.with_suffix(".pub"))
    assert verified.problems == [], verified.problems
    assert {"summary.json", "metrics.jsonl", "model.safetensors"} <= set(verified.artifacts)

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

    # the masks cancelled: the aggregate is a model, not ring noise (a leftover mask decodes to
    # values in the thousands; these weights stay below 1)
    model = load_file(str(run_dir / "model.safetensors"))
    values = np.concatenate([v.ravel() for v in model.values()])
    assert np.isfinite(values).all() and np.abs(values).max() < 4.0

    print(
        f"{KILLED} killed {killed - started:.0f} s in; whole test {time.monotonic() - started:.0f} s "
        f"(run: {summary['wall-seconds']:.0f} s)"
    )
