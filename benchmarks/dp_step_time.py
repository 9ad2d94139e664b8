"""DP-SGD cost per training step for the CKD models, on every device present (CPU, and CUDA if any).

Times one local epoch of the shared training loop with and without Opacus at CKD site size, repeated;
prints medians and the DP / non-DP ratio and writes JSON.

    python benchmarks/dp_step_time.py --out benchmarks/results/dp_step_time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedward.common.config import RunConfig
from fedward.common.device import pick_device
from fedward.common.models import build_tabular_model
from fedward.common.privacy import DPConfig
from fedward.common.training import LocalTraining, local_mechanism, train_model


def time_epochs(model_name: str, device: torch.device, dp: bool, n: int, batch: int, repeats: int) -> dict:
    """Median seconds per step over `repeats` epochs (after one warm-up epoch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 24, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    privacy = DPConfig(noise_multiplier=1.0, accountant="rdp") if dp else None
    per_step = []
    for rep in range(repeats + 1):
        model = build_tabular_model(model_name, 24)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        local = LocalTraining(batch_size=batch, seed=rep)
        mechanism = local_mechanism(privacy, n, local)
        loss = torch.nn.functional.cross_entropy
        out = train_model(model, data, loss, local, privacy, mechanism=mechanism, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rep:  # first epoch is warm-up
            per_step.append((time.perf_counter() - t0) / out.steps)
    return {"median-step-ms": 1000 * statistics.median(per_step), "steps": out.steps, "repeats": repeats}


def main() -> None:
    """Measure every model on every device, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=320, help="training samples (a large CKD site)")
    parser.add_argument("--batch-size", type=int, default=RunConfig().batch_size)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp_step_time.json"))
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([pick_device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for model in ("logreg", "mlp"):
            plain = time_epochs(model, device, False, args.n, args.batch_size, args.repeats)
            private = time_epochs(model, device, True, args.n, args.batch_size, args.repeats)
            row = {
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "model": model,
                "non-dp-step-ms": plain["median-step-ms"],
                "dp-step-ms": private["median-step-ms"],
                "ratio": private["median-step-ms"] / plain["median-step-ms"],
            }
            results.append(row)
            print(
                f"{row['device']:>24} {model:>6}  non-DP {row['non-dp-step-ms']:.3f} ms  "
                f"DP {row['dp-step-ms']:.3f} ms  ratio {row['ratio']:.2f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "dp_step_time",
        "settings": vars(args) | {"out": str(args.out)},
        "torch": torch.__version__,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
