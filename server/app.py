"""The fedward ServerApp: statistics step, strategy rounds, run directory."""

from __future__ import annotations

import logging
import math
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted

from common.config import RunConfig
from common.tasks import get_task
from server.rounds import RoundRecorder, RunStopped
from server.rundir import RunDirectory, default_run_name
from server.statistics import collect_statistics, wait_for_sites
from strategies.central_dp import with_central_dp
from strategies.observed import ObservedStrategy
from strategies.registry import StrategySettings, build_strategy
from strategies.validation import ValidatedStrategy

app = ServerApp()
log = logging.getLogger("fedward.server")


def _train_metrics(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Example-weighted train loss; the largest ε of any site."""
    metrics = [c["metrics"] for c in contents]
    total = sum(float(m[weighted_by_key]) for m in metrics)
    losses = [(float(m["train-loss"]), float(m[weighted_by_key])) for m in metrics]
    loss = sum(v * w for v, w in losses if not math.isnan(v)) / total if total else math.nan
    return MetricRecord(
        {"train-loss": loss, "epsilon-max": max(float(m["epsilon"]) for m in metrics), weighted_by_key: total}
    )


def _central_privacy(strategy) -> dict | None:
    """Site-level (ε, δ) of the released model under central DP, from Flower's accountant."""
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if spent is None:
        return None
    return {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training of the configured task."""
    started = time.monotonic()
    config = RunConfig.from_flower(context.run_config)
    task = get_task(config.task)
    run = RunDirectory.create(config.runs_dir, config.run_name or default_run_name(config.task))
    print(f"fedward: run directory {run.path}", flush=True)

    if config.hostile_sites:
        print(
            f"fedward: HOSTILE simulated sites (partitions {config.hostile_sites}): {config.hostile_mode} "
            f"x{config.hostile_scale:g}; ignored by sites with their own data-dir",
            flush=True,
        )
    node_ids = wait_for_sites(grid, config.min_sites)
    sites = collect_statistics(grid, node_ids)
    shared = task.combine_statistics([s.statistics for s in sites])
    run.write_json(
        "config.json",
        {
            "run-config": config.to_flower(),
            "sites": {s.site_id: s.report for s in sites},
            "flower-run-id": context.run_id,
        },
    )

    recorder = RoundRecorder(run, task, sites, config.num_server_rounds, config.min_sites)

    def pool(contents: list[RecordDict], _key: str) -> MetricRecord:
        return MetricRecord(task.pool([dict(c["metrics"]) for c in contents]))

    aggregation = build_strategy(
        config.strategy,
        num_sites=len(sites),
        train_metrics=_train_metrics,
        evaluate_metrics=pool,
        weighted_by_key="site-weight" if config.central_dp else "num-examples",
        settings=StrategySettings.from_config(config),
    )
    if config.central_dp:
        aggregation = with_central_dp(
            aggregation,
            noise_multiplier=config.central_dp_noise_multiplier,
            clipping_norm=config.central_dp_clipping_norm,
            num_sites=len(sites),
            delta=config.central_dp_delta or 1 / (10 * len(sites)),
        )
    validated = ValidatedStrategy(
        aggregation,
        max_update_norm=config.max_update_norm,
        norm_factor=config.update_norm_factor,
        on_reject=recorder.on_rejections,
    )
    strategy = ObservedStrategy(validated, on_train=recorder.on_train, on_evaluate=recorder.on_evaluate)
    torch.manual_seed(config.seed)
    initial = task.build_model(config)
    final = ArrayRecord(initial.state_dict())
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=final,
            num_rounds=config.num_server_rounds,
            train_config=ConfigRecord(shared),
            evaluate_config=ConfigRecord(shared),
        )
        final = result.arrays
    except (RunStopped, PrivacyBudgetExhausted) as stop:
        recorder.stop_reason = recorder.stop_reason or str(stop)
        print(f"fedward: run stopped: {stop}", flush=True)
        final = recorder.arrays or final
    run.save_model(final.to_torch_state_dict())
    last = recorder.last
    summary = {
        "task": config.task,
        "strategy": config.strategy,
        "rounds": config.num_server_rounds,
        "rounds-completed": last.get("round", 0),
        "dp": config.dp,
        "stopped": recorder.stop_reason,
        "central-dp": _central_privacy(aggregation),
        "overall": last.get("overall", {}),
        "sites": {
            site: {
                "evaluate": (last.get("sites", {}).get(site) or {}).get("evaluate"),
                "epsilon": recorder.epsilon.get(site),
                **recorder.budget.get(site, {}),
                "refused": recorder.refusals.get(site),
                "updates-rejected": recorder.rejection_counts.get(site, 0),
                "delta": (recorder.train.get(site) or {}).get("delta"),
                "privacy-steps": (recorder.train.get(site) or {}).get("privacy-steps"),
                "data": next(s.report for s in sites if s.site_id == site),
            }
            for site in sorted(s.site_id for s in sites)
        },
        "wall-seconds": time.monotonic() - started,
    }
    run.write_json("summary.json", summary)
    print(f"fedward: summary written to {run.path / 'summary.json'}", flush=True)
