"""Bytes of a train reply and final accuracy per `transfer-dtype` (float32, float16, bfloat16).

CKD: 3 sites, IID, 10 rounds, DP-SGD at ε 3 per site (the run defaults), in process
(tests/support/inprocess_grid.py: the real ServerApp and ClientApp code and Flower's serialisation both ways),
the dtypes interleaved per seed. Bytes are Flower's protobuf encoding of one site's train reply as sent
(`message_to_proto(reply).ByteSize()`: model arrays and metrics). The tumour CNN's reply size is the same
reply with the CNN's state dict (default tumour settings) in place of the CKD model. DP noise comes from
OS entropy, so the seeds fix the data split and initial weights only. Prints a table, writes JSON and
Markdown.

    python -P benchmarks/transfer_dtype.py [--seeds 3] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the in-process grid lives with the tests

from flwr.app import ArrayRecord, Message  # noqa: E402
from flwr.common.serde import message_from_proto, message_to_proto  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from inprocess_grid import InProcessGrid, ckd_run_config, run_server  # noqa: E402

from fedward.common.config import RunConfig  # noqa: E402
from fedward.common.tasks import get_task  # noqa: E402
from fedward.common.transfer import TRANSFER_DTYPES, encode  # noqa: E402
from fedward.server.deployment.provision import write_provenance_key  # noqa: E402
from fedward.server.provenance.signing import PROVENANCE_KEY, SIGNING_KEY_ENV  # noqa: E402
from fedward.simulations.prepare import prepare_ckd_sites  # noqa: E402

FIELDS = ("accuracy", "roc-auc", "epsilon", "reply-bytes", "seconds")


def _train_reply(grid: InProcessGrid) -> Message:
    return next(r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error())


def tumour_reply_bytes(reply: Message, dtype: str) -> int:
    """Bytes of `reply` with the tumour CNN's arrays (default tumour config) cast to `dtype`."""
    model = get_task("tumour").build_model(RunConfig(task="tumour"))
    copy = message_from_proto(message_to_proto(reply))  # the grid's record stays as sent
    copy.content["arrays"] = encode(ArrayRecord(model.state_dict()), dtype)
    return message_to_proto(copy).ByteSize()


def run_arm(dtype: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """One CKD federation: overall accuracy and AUC, the largest site ε, one reply's bytes, wall seconds."""
    data_root = work / f"sites-seed{seed}"
    if not data_root.exists():
        prepare_ckd_sites(data_root, args.sites, "iid", seed=seed)
    name = f"{dtype}-seed{seed}"
    settings = {
        "run-name": name,
        "num-server-rounds": args.rounds,
        "min-sites": args.sites,
        "seed": seed,
        "dp-target-epsilon": args.epsilon,
        "transfer-dtype": dtype,
    }
    config = ckd_run_config(data_root, work / "runs", **settings)
    grid = InProcessGrid(config, args.sites)
    started = time.perf_counter()
    run_server(grid, config)
    seconds = time.perf_counter() - started
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    reply = _train_reply(grid)
    ckd_bytes = message_to_proto(reply).ByteSize()
    return {
        "accuracy": summary["overall"].get("accuracy"),
        "roc-auc": summary["overall"].get("roc-auc"),
        "epsilon": max(s["epsilon"] for s in summary["sites"].values()),
        "rounds-completed": summary["rounds-completed"],
        "reply-bytes": ckd_bytes,
        "tumour-reply-bytes": tumour_reply_bytes(reply, dtype),
        "seconds": seconds,
    }


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sd over seeds per dtype; the tumour reply's bytes."""
    table: dict[str, dict[str, float]] = {}
    for dtype in [d for d in TRANSFER_DTYPES if any(r["dtype"] == d for r in rows)]:
        group = [r for r in rows if r["dtype"] == dtype]
        out: dict[str, float] = {"seeds": len(group), "tumour-reply-bytes": group[0]["tumour-reply-bytes"]}
        for field in FIELDS:
            values = [r[field] for r in group if r[field] is not None]
            if values:
                out[f"{field}-mean"] = statistics.fmean(values)
                out[f"{field}-sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table[dtype] = out
    return table


def markdown(table: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """The BENCHMARKS.md table."""
    base = table.get("float32", {})
    lines = [
        f"Train reply bytes (Flower protobuf) and CKD utility per `transfer-dtype`: CKD {args.sites} sites, "
        f"IID, {args.rounds} rounds, DP-SGD ε {args.epsilon:g} per site, in process; mean ± sd over "
        f"{args.seeds} seeds. Tumour CNN: the same reply with the default tumour CNN's weights.",
        "",
        "| transfer-dtype | CKD reply bytes | tumour CNN reply bytes | accuracy | ROC AUC | max ε | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtype, row in table.items():
        ckd, tumour = row["reply-bytes-mean"], row["tumour-reply-bytes"]
        ratio = ""
        if base and dtype != "float32":
            ratio = (
                f" ({ckd / base['reply-bytes-mean']:.2f}×)",
                f" ({tumour / base['tumour-reply-bytes']:.2f}×)",
            )
        lines.append(
            f"| {dtype} | {ckd:,.0f}{ratio[0] if ratio else ''} | {tumour:,.0f}{ratio[1] if ratio else ''} "
            f"| {row['accuracy-mean']:.3f} ± {row['accuracy-sd']:.3f} "
            f"| {row['roc-auc-mean']:.3f} ± {row['roc-auc-sd']:.3f} | {row['epsilon-mean']:.2f} "
            f"| {row['seconds-mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    """JSON results and the Markdown table for the runs done so far."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "transfer_dtype",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": rows,
        "summary": summarise(rows),
        "wall-seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summarise(rows), args))


def main() -> None:
    """Parse options, run every (seed, dtype), print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--dtypes", nargs="+", default=list(TRANSFER_DTYPES), choices=TRANSFER_DTYPES)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer_dtype.json"))
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # Messages outside Flower
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fedward-transfer-dtype-") as tmp:
        work = Path(tmp)
        write_provenance_key(work)  # runs sign with a throwaway key, not the user's
        os.environ[SIGNING_KEY_ENV] = str(work / PROVENANCE_KEY)
        for seed in range(args.seeds):
            for dtype in args.dtypes:  # interleaved: load hits every dtype alike
                row = {"seed": seed, "dtype": dtype, **run_arm(dtype, seed, args, work)}
                rows.append(row)
                print(f"seed {seed} {dtype}: {row}", flush=True)
                write(rows, args, time.perf_counter() - started)  # partial results survive a stop
    print(markdown(summarise(rows), args))


if __name__ == "__main__":
    main()
