"""What a simulated federation costs beyond the sites' own compute: framework overhead per round, start-up
time, wall time and peak memory as the number of sites grows, and bytes sent per site per round.

Every figure comes from real `fedward sim` runs (Flower simulation SuperLink, Ray, subprocess isolation):
the sites report their own compute time (`site-seconds`), the server records each round's wall time, and
`overhead-seconds` = round wall time − the slowest site's train and evaluate compute. Memory is the peak
summed RSS of the whole process tree (SuperLink, Ray, ServerApp, ClientApp workers), sampled every 0.2 s.
Bytes are Flower's own protobuf encoding of a site's train reply. Prints a table, writes JSON and Markdown.

    python -P benchmarks/simulation_costs.py [--repeats 3] [--scale 10 30 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

FEDWARD = str(Path(sys.executable).parent / "fedward")


def _watch(proc: subprocess.Popen, peak: list[int], stop: threading.Event) -> None:
    """Record the peak RSS of `proc` and all its descendants."""
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for p in tree:
                with contextlib.suppress(psutil.Error):  # a process may end while we look
                    total += p.memory_info().rss
            peak[0] = max(peak[0], total)
        except psutil.Error:
            return
        stop.wait(0.2)


def run_sim(args: list[str], work: Path, name: str) -> dict:
    """One `fedward sim` run: wall time, time to the run directory and to the first round, peak memory,
    and its metrics.jsonl records."""
    command = [FEDWARD, "sim", *args, "--name", name, "--runs-dir", str(work)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc, peak, stop), daemon=True)
    watcher.start()
    marks: dict[str, float] = {}
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail, line][-20:]
        if line.startswith("fedward: run directory"):
            marks.setdefault("server-started", time.perf_counter() - started)
        if line.startswith("round  1/"):
            marks.setdefault("first-round-done", time.perf_counter() - started)
    proc.wait()
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(tail)}")
    records = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {"wall-seconds": wall, "peak-rss-mb": peak[0] / 2**20, **marks, "rounds": records}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def overhead(run: dict) -> dict:
    """Median per-round framework overhead and round time, leaving out round 1 (DP calibration, model
    loading in fresh workers) and the last round (the sites bootstrap their confidence intervals)."""
    middle = run["rounds"][1:-1] or run["rounds"]
    return {
        "overhead-ms": 1000 * _median([r["overhead-seconds"] for r in middle]),
        "round-ms": 1000 * _median([r["round-seconds"] for r in middle]),
        "site-ms": 1000 * _median([r["site-seconds"] for r in middle]),
    }


def reply_bytes(task: str, model_name: str | None = None) -> dict:
    """Encoded size of one site's train reply vs the model's fp32 size (Flower's protobuf encoding)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.serde import message_to_proto
    from flwr.supercore.task_identity import TaskIdentity

    from fedward.common.config import RunConfig
    from fedward.common.tasks import get_task

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    extra = {"model": model_name, "image_depth": 0} if model_name == "densenet121" else {}  # 2D DenseNet
    config = RunConfig(task=task, **extra)
    model = get_task(task).build_model(config)
    fp32 = sum(p.numel() for p in model.state_dict().values()) * 4
    out = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=2, message_type="train")
    arrays = ArrayRecord(model.state_dict())
    metric_keys = ("num-examples", "site-weight", "train-loss", "epsilon", "epsilon-lifetime", "epsilon-cap",
                   "delta", "noise-multiplier", "steps", "privacy-steps", "site-seconds")  # fmt: skip
    metrics = MetricRecord({k: 1.0 for k in metric_keys})
    reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=out)
    arrays_only = Message(RecordDict({"arrays": arrays}), reply_to=out)
    total, only = message_to_proto(reply).ByteSize(), message_to_proto(arrays_only).ByteSize()
    return {
        "model-fp32-bytes": fp32,
        "reply-bytes": total,
        "arrays-bytes": only,
        "reply-ratio": total / fp32,
        "arrays-ratio": only / fp32,
    }


def markdown(results: dict) -> str:
    """The BENCHMARKS.md tables."""
    lines = ["| model | sites | framework overhead per round (median ms) | round (ms) | slowest site (ms) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["overhead"].items():
        lines.append(f"| {name} | 5 | {r['overhead-ms']:.0f} | {r['round-ms']:.0f} | {r['site-ms']:.0f} |")
    lines += ["", "| sites (CKD, 10 rounds, DP) | wall s | start-up to first round s | peak memory MB |",
              "|---|---|---|---|"]  # fmt: skip
    for sites, r in results["scale"].items():
        lines.append(
            f"| {sites} | {r['wall-seconds']:.0f} | {r.get('first-round-done', float('nan')):.1f} "
            f"| {r['peak-rss-mb']:.0f} |"
        )
    lines += [
        "",
        "| model | fp32 size B | train reply B | ratio | arrays only B | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["bytes"].items():
        lines.append(
            f"| {name} | {r['model-fp32-bytes']} | {r['reply-bytes']} | {r['reply-ratio']:.3f} "
            f"| {r['arrays-bytes']} | {r['arrays-ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Overhead (CKD and tumour, 5 sites), scale (CKD 10/30/100 sites), bytes, start-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, nargs="*", default=[10, 30, 100])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/simulation_costs.json"))
    args = parser.parse_args()
    results: dict = {"overhead": {}, "scale": {}, "bytes": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="fedward-costs-") as tmp:
        work = Path(tmp)
        for name, sim in (
            ("ckd", ["ckd", "--sites", "5", "--rounds", "10", "--no-dp"]),
            ("tumour", ["tumour", "--sites", "5", "--rounds", "4", "--patients", "12", "--no-dp"]),
        ):
            runs = [run_sim(sim, work, f"{name}-{i}") for i in range(args.repeats)]
            per_run = [overhead(r) for r in runs]
            results["overhead"][name] = {k: _median([p[k] for p in per_run]) for k in per_run[0]}
            results["runs"][name] = [{k: v for k, v in r.items() if k != "rounds"} for r in runs]
            print(name, results["overhead"][name], flush=True)
        for sites in args.scale:
            run = run_sim(["ckd", "--sites", str(sites), "--rounds", "10"], work, f"scale-{sites}")
            results["scale"][str(sites)] = {k: v for k, v in run.items() if k != "rounds"}
            print(sites, results["scale"][str(sites)], flush=True)
    for label, task, model_name in (
        ("ckd mlp", "ckd", None),
        ("tumour cnn", "tumour", None),
        ("tumour densenet121 (2D)", "tumour", "densenet121"),
        ("tumour-seg unet", "tumour-seg", None),
    ):
        results["bytes"][label] = reply_bytes(task, model_name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
