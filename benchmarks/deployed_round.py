"""A deployed 3-site CKD federation on this machine, and where a site's message time goes.

Two deployments, side by side on the same site data:

- **flower-isolation**: a SuperLink and three SuperNodes on 127.0.0.1 (insecure), each in Flower's
  subprocess isolation, so every message runs in a fresh `flwr-clientapp` process; `flwr run .`;
- **fedward**: the deployment hospitals run: `fedward provision`, `fedward coordinator start` (TLS,
  SuperNode authentication, the Control API behind the operator's certificate), `fedward site start` per
  site (the gated SuperExec: every bundle's signature checked, each task forked from the warm worker that
  imported torch and Opacus once) and `fedward run` (a signed bundle).

Each runs with and without DP; the figures come from the run folder's `metrics.jsonl` (round-seconds,
site-seconds). Then, in fresh processes, one train message's stages are timed one by one (import,
data load, σ calibration, training), beside plain Flower's own per-process floor (importing the
ClientApp API). Writes benchmarks/results/deployed_round.json.

    python benchmarks/deployed_round.py [--rounds 3] [--sites 3] [--arms dp,no-dp]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / "results" / "deployed_round.json"

ANATOMY = """
import json, sys, time
t0 = time.perf_counter()
import fedward.client.app  # the ClientApp module the SuperNode's flwr-clientapp loads
from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.client.site import load_site_for_run
from fedward.common.config import RunConfig
from fedward.common.tasks import SiteSource, get_task
from fedward.common.training import train_model
config = RunConfig(num_server_rounds=int(sys.argv[2]), dp=sys.argv[3] == "dp")
task = get_task(config.task)
if config.dp:
    import opacus  # noqa: F401  (imported by the first private step otherwise)
t1 = time.perf_counter()
site = load_site_for_run(SiteSource("bench", __import__("pathlib").Path(sys.argv[1])), config)
t2 = time.perf_counter()
plan = SiteBudget(SitePrivacy(), site).plan(config, site.num_train, spent=((6.0, 1.0, 1),))
t3 = time.perf_counter()
from fedward.common.data.ckd_schema import NUM_FEATURES
scaling = {"feature-mean": [0.0] * NUM_FEATURES, "feature-std": [1.0] * NUM_FEATURES}
train_set, _ = task.datasets(site, scaling)
model = task.build_model(config)
dp = config.privacy if plan is not None else None
train_model(model, train_set, task.loss, config.local_training(1, 0), dp, mechanism=plan)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "data-load": t2 - t1, "calibration": t3 - t2, "training": t4 - t3}))
"""


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> None:
    """Until something listens on 127.0.0.1:`port` (the SuperLink's Control API)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.5)


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def deployed_run(work: Path, sites: list[Path], rounds: int, dp: bool, timeout: float = 900) -> dict:
    """One run through a fresh local deployment; per-round figures from the run folder."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    port = _port()  # Flower 1.42's SuperLink serves Fleet, Control and Runtime APIs over one HTTP port
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = _env(home)
    procs = [
        _start(
            [
                str(BIN / "flower-superlink"), "--insecure", "--isolation", "subprocess",
                "--disable-runtime-dependency-installation", "--database", str(work / "superlink.db"),
                "--host", "127.0.0.1", "--port", str(port),
            ],
            work / "superlink.log",
            env,
        )
    ]  # fmt: skip
    try:
        for i, data in enumerate(sites):
            node_config = f'data-dir="{data}" site-id="site-{i}" state-dir="{work / f"state-{i}"}"'
            procs.append(
                _start(
                    [
                        str(BIN / "flower-supernode"), "--insecure", "--isolation", "subprocess",
                        "--superlink", f"127.0.0.1:{port}", "--port", str(_port()),
                        "--node-config", node_config,
                    ],
                    work / f"supernode-{i}.log",
                    env,
                )
            )  # fmt: skip
        runs = work / "runs"
        overrides = work / "run-config.toml"
        overrides.write_text(
            f"num-server-rounds = {rounds}\nmin-sites = {len(sites)}\ndp = {str(dp).lower()}\n"
            f'runs-dir = "{runs}"\nrun-name = "bench"\n'
        )
        _wait_for_port(port, 120)
        submitted = time.monotonic()
        command = ["run", str(ROOT), "bench", "--run-config", str(overrides), "--format", "json"]
        reply = subprocess.run(
            [str(BIN / "flwr"), *command], env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        answer = reply.stdout[reply.stdout.find("{") :]
        if not answer or json.loads(answer).get("success") is not True:
            raise RuntimeError(f"flwr run failed: {reply.stdout[-1500:]} {reply.stderr[-1500:]}")
        total = _wait_for_summary(runs / "bench", submitted, timeout)
    finally:
        _stop(procs)
    return _round_figures(runs / "bench" / "metrics.jsonl", dp, total)


POLICY = """[policy]
epsilon-cap = 100.0
delta = 1e-3
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["ckd"]
min-samples = 10
"""
"""A deployed site needs a policy, and a site with a policy trains only with DP."""


def fedward_run(work: Path, sites: list[Path], rounds: int, dp: bool, timeout: float = 900) -> dict:
    """One run through `fedward provision` / `coordinator start` / `site start` / `run` (TLS, gated,
    warm worker; DP, as every site with a policy requires); per-round figures from the run folder."""
    from fedward.server.deployment import superlink
    from fedward.server.deployment.provision import provision

    names = [f"H{i + 1}" for i in range(len(sites))]
    policy = work / "policy.toml"
    work.mkdir(parents=True, exist_ok=True)
    policy.write_text(POLICY)
    port = _port()
    fed = provision(work / "federation", names, sans=["127.0.0.1"], port=port, name="bench")
    env = {k: v for k, v in os.environ.items() if k != "FEDWARD_SIGNING_KEY"}  # the federation signs
    env["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    fedward = str(BIN / "fedward")
    coordinator = work / "coordinator.log"
    procs = [_start([fedward, "coordinator", "start", "--federation", str(fed.root), "--host", "127.0.0.1"],
                    coordinator, env)]  # fmt: skip
    try:
        _wait_for_text(coordinator, "coordinator ready", 120)
        for name, data in zip(names, sites, strict=True):
            procs.append(
                _start(
                    [
                        fedward, "site", "start", "--kit", str(fed.sites[name].dir), "--data", str(data),
                        "--state", str(work / f"state-{name}"), "--policy", str(policy),
                        "--superlink", f"127.0.0.1:{port}",
                        "--port", str(_port()),
                    ],
                    work / f"site-{name}.log",
                    env,
                )
            )  # fmt: skip
        files = superlink.load_federation(fed.root)
        deadline = time.monotonic() + 180
        while True:
            with superlink.operator_home(files) as home:
                nodes = superlink.flwr_json(["supernode", "list", fed.name], home)["nodes"]
            if sum(n["status"] == "online" for n in nodes) == len(sites):
                break
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[1:3]} exited: see the logs in {work}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sites not online after 180 s: see {work}")
            time.sleep(1)
        runs = work / "runs"
        submitted = time.monotonic()
        subprocess.run(
            [
                fedward, "run", "--federation", str(fed.root), "--poll", "1", "--timeout", str(int(timeout)),
                "-c", f"num-server-rounds={rounds} min-sites={len(sites)} dp={str(dp).lower()}",
                "-c", f'runs-dir="{runs}" run-name="bench"',
            ],
            env=env, capture_output=True, text=True, timeout=timeout + 60, check=True,
        )  # fmt: skip
        total = _wait_for_summary(runs / "bench", submitted, timeout)
    finally:
        _stop(procs)
    return _round_figures(runs / "bench" / "metrics.jsonl", dp, total)


def _wait_for_summary(run: Path, submitted: float, timeout: float) -> float:
    """Seconds from submission until the run folder's summary.json exists."""
    while not (run / "summary.json").exists():
        if time.monotonic() > submitted + timeout:
            raise RuntimeError(f"no summary after {timeout:.0f} s: see {run}")
        time.sleep(0.5)
    return time.monotonic() - submitted


def _wait_for_text(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not in {log} after {timeout:.0f} s")
        time.sleep(0.5)


def _round_figures(metrics: Path, dp: bool, total: float) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    rows = [r for r in rows if "round-seconds" in r]
    return {
        "dp": dp,
        "submit-to-summary-s": round(total, 2),
        "round-seconds": [round(float(r["round-seconds"]), 3) for r in rows],
        "median-round-s": round(statistics.median(float(r["round-seconds"]) for r in rows), 3),
        "site-seconds": [round(float(r.get("site-seconds", 0.0)), 3) for r in rows],
    }


def anatomy(data: Path, rounds: int, dp: bool, repeats: int = 3) -> dict:
    """One train message's stages in a fresh process each time (medians of `repeats`)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", ANATOMY, str(data), str(rounds), "dp" if dp else "no-dp"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        stages = json.loads(done.stdout.strip().splitlines()[-1])
        stages["process-wall"] = time.perf_counter() - started
        samples.append(stages)
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}


def flower_floor(repeats: int = 3) -> float:
    """Plain Flower's per-message floor: a fresh interpreter importing the ClientApp API (median s)."""
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import flwr.clientapp, flwr.app"], check=True)
        walls.append(time.perf_counter() - started)
    return round(statistics.median(walls), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--arms", default="no-dp,dp")
    parser.add_argument("--no-deploy", action="store_true", help="only the per-process anatomy")
    parser.add_argument("--deployments", default="flower-isolation,fedward")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from fedward.simulations.prepare import prepare_ckd_sites

    result: dict = {"rounds": args.rounds, "sites": args.sites, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="fedward-deployed-") as tmp:
        sites = prepare_ckd_sites(Path(tmp) / "data", args.sites, "iid")
        result["flower-clientapp-import-s"] = flower_floor()
        for arm in args.arms.split(","):
            result[f"anatomy-{arm}"] = anatomy(sites[0], args.rounds, arm == "dp")
            for deployment in [] if args.no_deploy else args.deployments.split(","):
                if deployment == "fedward" and arm != "dp":
                    continue  # a deployed site has a policy, and a policy refuses runs without DP
                run = deployed_run if deployment == "flower-isolation" else fedward_run
                work = Path(tmp) / f"{deployment}-{arm}"
                result[f"{deployment}-{arm}"] = run(work, sites, args.rounds, arm == "dp")
            print(json.dumps({k: v for k, v in result.items() if arm in k}), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
