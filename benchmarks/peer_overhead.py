"""fedward against plain Flower on the same federation: what fedward's framework costs.

Arms, interleaved so that machine load hits both alike (ratios are the figures, absolute seconds are not):

- **flower**: a minimal plain Flower 1.42 app (Message API, `FedAvg`, `flwr.simulation.run_simulation`
  in one process, Ray actors as sites): the same CKD model (24-32-2 MLP), the same site shards
  (fedward's own `prepare_ckd_sites` folders), the same local epochs, batch size and learning rate,
  no DP, plain evaluation (loss, accuracy);
- **fedward**: `fedward sim ckd --no-dp` on the same shards' settings (statistics release, reply checks,
  disclosure control, confidence intervals, run folder, signed model: everything a run does);
- **fedward-dp** (smallest federation only): the same with DP-SGD at every site, for the private round's cost.

Per arm: total wall (launch to exit), launch → first round result, median round, last round, peak
memory of the whole process tree (RSS summed, sampled every 0.1 s); and `fedward --help` against
`flwr --help`. NVIDIA FLARE's simulator is not an arm here (no FLARE environment on this machine).

    python -P benchmarks/peer_overhead.py [--sites 5 20 100] [--rounds 10] [--repeats 3]

Prints a table; writes benchmarks/results/peer_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
ROUND_MARK = "PEER-ROUND "


# ---------------------------------------------------------------- the plain Flower app (child process)
def plain_flower(data_root: Path, sites: int, rounds: int, epochs: int, batch: int, lr: float) -> None:
    """Run the plain Flower federation; prints `PEER-ROUND <r> <seconds since start>` after each round."""
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
    from flwr.simulation import run_simulation

    started = time.perf_counter()

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))

    def shard(context: Context, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from fedward.common.data.ckd import (
            load_ckd_csv,  # the same parser: reading costs the same in both arms
        )

        folder = data_root / f"site-{int(context.node_config['partition-id'])}"
        table = load_ckd_csv(folder / f"{split}.csv", strict=False)
        x = np.nan_to_num((table.x - np.nanmean(table.x, 0)) / (np.nanstd(table.x, 0) + 1e-6))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(table.y)

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        net = model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = shard(context, "train")
        optimiser = torch.optim.SGD(net.parameters(), lr=lr)
        for _ in range(epochs):
            for index in torch.randperm(len(y)).split(batch):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(net(x[index]), y[index]).backward()
                optimiser.step()
        metrics = MetricRecord({"num-examples": len(y)})
        return Message(
            RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg
        )

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        net = model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = shard(context, "test")
        with torch.no_grad():
            out = net(x)
        metrics = {
            "loss": float(torch.nn.functional.cross_entropy(out, y)),
            "accuracy": float((out.argmax(1) == y).float().mean()),
            "num-examples": len(y),
        }
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        done = [0]

        def evaluated(replies: list[RecordDict], key: str) -> MetricRecord:
            """The round's evaluation aggregate, as fedward prints its round line: marks the round's end."""
            done[0] += 1
            print(f"{ROUND_MARK}{done[0]} {time.perf_counter() - started:.3f}", flush=True)
            return aggregate_metricrecords(replies, key)

        FedAvg(
            min_available_nodes=sites, min_train_nodes=sites, min_evaluate_nodes=sites,
            evaluate_metrics_aggr_fn=evaluated,
        ).start(
            grid=grid, initial_arrays=ArrayRecord(model().state_dict()), num_rounds=rounds,
            train_config=ConfigRecord({}),
        )  # fmt: skip

    run_simulation(server_app=server, client_app=client, num_supernodes=sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})  # fmt: skip


# ---------------------------------------------------------------- measuring a command
def _watch(proc: subprocess.Popen, peak: list[int], stop: threading.Event) -> None:
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        total = 0
        with contextlib.suppress(psutil.Error):
            for member in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
        peak[0] = max(peak[0], total)
        stop.wait(0.1)


def measure(command: list[str], cwd: Path) -> dict:
    """Wall time, time of each round's result line, peak tree memory of one command."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc, peak, stop), daemon=True)
    watcher.start()
    rounds: list[float] = []
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail, line][-30:]
        if line.startswith(ROUND_MARK) or line.startswith("round "):
            rounds.append(time.perf_counter() - started)
    proc.wait()
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(tail)}")
    steps = [b - a for a, b in itertools.pairwise(rounds)]
    return {
        "wall-seconds": wall,
        "first-round-seconds": rounds[0] if rounds else float("nan"),
        "median-round-seconds": statistics.median(steps[:-1]) if len(steps) > 1 else float("nan"),
        "last-round-seconds": steps[-1] if steps else float("nan"),
        "peak-mb": peak[0] / 2**20,
    }


def help_seconds(tool: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(BIN / tool), "--help"], capture_output=True, check=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------- the comparison
def compare(sites: int, rounds: int, repeats: int, work: Path, private: bool) -> dict:
    """The arms `repeats` times at `sites` sites, alternating their order."""
    from fedward.common.config import RunConfig
    from fedward.simulations.prepare import prepare_ckd_sites

    defaults = RunConfig()
    data = work / f"shards-{sites}"
    prepare_ckd_sites(data, sites, "iid", alpha=1.0, test_fraction=defaults.test_fraction, seed=0)
    flower = [
        sys.executable, "-P", __file__, "--plain-flower", str(data),
        "--sites", str(sites), "--rounds", str(rounds),
    ]  # fmt: skip
    fedward = [
        str(BIN / "fedward"), "sim", "ckd", "--sites", str(sites), "--rounds", str(rounds), "--no-dp",
        "--runs-dir", str(work / "runs"),
    ]  # fmt: skip
    commands = {"flower": flower, "fedward": fedward}
    if private:  # the same fedward run with DP-SGD at every site (ε 3): what privacy costs per round
        commands["fedward-dp"] = [arg for arg in fedward if arg != "--no-dp"]
    arms: dict[str, list[dict]] = {arm: [] for arm in commands}
    for repeat in range(repeats):
        order = list(commands) if repeat % 2 == 0 else list(reversed(commands))
        for arm in order:
            result = measure(commands[arm], work)
            print(f"  {sites:>4} sites  {arm:<10} " + "  ".join(f"{k} {v:.2f}" for k, v in result.items()))
            arms[arm].append(result)
    medians = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in arms.items()}
    ratios = {k: medians["fedward"][k] / medians["flower"][k] for k in medians["flower"]}
    out = {"runs": arms, "medians": medians, "ratios": ratios}
    if private:
        out["private-round-ratio"] = (
            medians["fedward-dp"]["median-round-seconds"] / medians["fedward"]["median-round-seconds"]
        )
    return out


def markdown(results: dict) -> str:
    keys = ("wall-seconds", "first-round-seconds", "median-round-seconds", "last-round-seconds", "peak-mb")
    head = "| sites | " + " | ".join(f"{k} fedward / Flower" for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for sites, r in results["sites"].items():
        cells = [
            f"{r['ratios'][k]:.2f}× ({r['medians']['fedward'][k]:.2f} / {r['medians']['flower'][k]:.2f})"
            for k in keys
        ]
        lines.append(f"| {sites} | " + " | ".join(cells) + " |")
    for sites, r in results["sites"].items():
        if "private-round-ratio" in r:
            m = r["medians"]
            lines.append(
                f"\nfedward at {sites} sites, median round with DP-SGD (ε 3) / without: "
                f"{r['private-round-ratio']:.2f}× ({m['fedward-dp']['median-round-seconds']:.2f} s / "
                f"{m['fedward']['median-round-seconds']:.2f} s)"
            )
    h = results["help"]
    lines += [
        "",
        f"`fedward --help` / `flwr --help`: {h['ratio']:.2f}× "
        f"(medians {h['fedward']:.2f} s / {h['flwr']:.2f} s)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-flower", type=Path, help=argparse.SUPPRESS)  # the child: run the Flower arm
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.plain_flower:
        from fedward.common.config import RunConfig

        d = RunConfig()
        plain_flower(args.plain_flower, args.sites[0], args.rounds, d.local_epochs, d.batch_size, d.lr)
        return
    helps = {"fedward": [], "flwr": []}
    for _ in range(5):
        for tool in helps:
            helps[tool].append(help_seconds(tool))
    help_medians = {tool: statistics.median(v) for tool, v in helps.items()}
    results = {
        "rounds": args.rounds,
        "repeats": args.repeats,
        "help": {**help_medians, "ratio": help_medians["fedward"] / help_medians["flwr"]},
        "sites": {},
    }
    with tempfile.TemporaryDirectory(prefix="peer-overhead-") as tmp:
        for sites in args.sites:
            private = sites == args.sites[0]  # the DP arm at the smallest federation only
            results["sites"][str(sites)] = compare(sites, args.rounds, args.repeats, Path(tmp), private)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS / "peer_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
