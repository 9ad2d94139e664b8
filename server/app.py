"""The fedward ServerApp: statistics step, strategy rounds, run directory."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError, FedwardError
from fedward.common.secure_aggregation import SecAggParameters
from fedward.common.tasks import Task, get_task
from fedward.server.checkpoint import RoundCheckpoint, restore_strategy_state, seed_everything
from fedward.server.cross_site import CROSS_SITE, cross_site_matrix
from fedward.server.export import finalise_run
from fedward.server.provenance.manifest import MANIFEST_FILE, sha256_file
from fedward.server.provenance.signing import resolve_signing_key
from fedward.server.rounds import RoundRecorder, RunStopped
from fedward.server.run_grid import RunGrid
from fedward.server.run_inputs import load_run_inputs
from fedward.server.rundir import CONFIG_FILE, SUMMARY_FILE, RunDirectory, default_run_name
from fedward.server.secure_aggregation import SecureAggregationGrid
from fedward.server.statistics import collect_statistics, pooled_noise_std, wait_for_sites
from fedward.strategies.central_dp import with_central_dp
from fedward.strategies.observed import ObservedStrategy
from fedward.strategies.registry import StrategySettings, build_strategy, sample_size
from fedward.strategies.reply_checks import SiteLimits, site_limits
from fedward.strategies.validation import ValidatedStrategy, non_finite_entry

app = ServerApp()
SIMULATION_PULL_INTERVAL = 0.005  # seconds between reply polls in a simulation (Flower's default: 0.1)
log = logging.getLogger("fedward.server")


def _train_metrics(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Example-weighted train loss (sites training without DP only: private sites do not send it); the
    largest ε of any site."""
    metrics = [c["metrics"] for c in contents]
    total = sum(float(m[weighted_by_key]) for m in metrics)
    losses = [(float(m["train-loss"]), float(m[weighted_by_key])) for m in metrics if "train-loss" in m]
    weight = sum(w for v, w in losses if not math.isnan(v))
    loss = sum(v * w for v, w in losses if not math.isnan(v)) / weight if weight else math.nan
    return MetricRecord(
        {"train-loss": loss, "epsilon-max": max(float(m["epsilon"]) for m in metrics), weighted_by_key: total}
    )


def _site_limits(config: RunConfig, sites: list, model: ArrayRecord, task: Task) -> dict[int, SiteLimits]:
    """Each site's limits (examples it may claim, its DP-SGD update bound) from its statistics release. The
    bound assumes the run's release σ, never the σ a site reports (a tiny one would claim a budget spent on
    the release, hence a larger DP-SGD σ, or none at all), and a site's reported noise can narrow its
    plausible patient counts but not widen them past the run's (a huge one would void the bound)."""
    release_sigma, release_noise_std = task.statistics_sigma(config), task.statistics_noise_std(config)
    dim = sum(a.numpy().size for a in model.values() if np.issubdtype(a.numpy().dtype, np.floating))
    return {
        s.node_id: site_limits(
            config,
            count=float(s.statistics.get("num-examples", s.sums[0])),
            count_noise_std=min(s.noise_std, release_noise_std),
            num_test=float(s.report.get("num-test", math.nan)),
            dim=dim,
            release_sigma=release_sigma,
        )
        for s in sites
    }


def _round_grid(grid: Grid, config: RunConfig, sites: list, limits: dict[int, SiteLimits]) -> RunGrid:
    """The strategy's grid: the run's sites only; with secure aggregation, every train round runs the
    protocol, with the largest count a site may claim as the public weight unit."""
    nodes = [s.node_id for s in sites]
    if not config.secure_aggregation:
        return RunGrid(grid, nodes)
    unit = max((lim.max_examples for lim in limits.values()), default=0) or 1.0
    return SecureAggregationGrid(grid, nodes, SecAggParameters.from_config(config), unit)


def _central_privacy(strategy) -> dict | None:
    """Site-level (ε, δ) of the released model under central DP, from Flower's accountant."""
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if spent is None:
        return None
    return {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}


def _lifetime(local: dict | None) -> dict:
    """The lifetime budget after local-only training, which comes after the last federated round."""
    if not local or "epsilon-lifetime" not in local:
        return {}
    lifetime, cap = local["epsilon-lifetime"], local.get("epsilon-cap", math.inf)
    return {"epsilon-lifetime": lifetime, "epsilon-cap": cap, "epsilon-left": cap - lifetime}


def _statistics_release(sites: list, site_id: str) -> dict:
    """ε of the site's statistics release alone, and whether this run drew (and paid for) it."""
    release = next(s for s in sites if s.site_id == site_id).statistics
    if "epsilon" not in release:
        return {}
    return {
        "statistics-epsilon": float(release["epsilon"]),
        "statistics-drawn-now": bool(release.get("drawn-now")),
    }


def _run_uid(run: RunDirectory, config: RunConfig, checkpoint: RoundCheckpoint | None) -> str:
    """The logical run's id: kept across resumes (sites key their per-run privacy state by it)."""
    if checkpoint is not None:
        return checkpoint.run_uid
    if config.resume and run.has(CONFIG_FILE):
        return str(run.config().get("run-uid") or RoundCheckpoint.new_run_uid())
    return RoundCheckpoint.new_run_uid()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training of the configured task."""
    started = time.monotonic()
    config = RunConfig.from_flower(context.run_config)
    task = get_task(config.task)
    if config.resume and not config.run_name:
        raise ConfigError("resume = true needs run-name: the run directory to continue")
    run = RunDirectory.create(config.runs_dir, config.run_name or default_run_name(config.task))
    print(f"fedward: run directory {run.path}", flush=True)
    signing_key = resolve_signing_key(None)  # a bad key fails now, not after training
    checkpoint = RoundCheckpoint.load(run.path, signing_key) if config.resume else None  # verified first
    inputs = load_run_inputs(task, config, signing_key)  # records sent with every train/evaluate message
    run_uid = _run_uid(run, config, checkpoint)

    if config.dp_seeded_noise:
        print(
            "fedward: WARNING dp-seeded-noise is on: DP noise is replayable from the run seed, so this run "
            "has NO privacy guarantee (research switch; sites with their own data or policy refuse it)",
            flush=True,
        )
    if config.hostile_sites:
        print(
            f"fedward: HOSTILE simulated sites (partitions {config.hostile_sites}): {config.hostile_mode} "
            f"x{config.hostile_scale:g}; ignored by sites with their own data-dir",
            flush=True,
        )
    if hasattr(grid, "pull_interval"):  # the simulation's in-memory grid polls for replies every 0.1 s
        grid.pull_interval = min(float(grid.pull_interval), SIMULATION_PULL_INTERVAL)
    node_ids = wait_for_sites(grid, config.min_sites)
    sites, failed = collect_statistics(grid, node_ids, run_uid, config.min_sites)
    for reason in failed.values():  # the federation goes on with the others (min-sites still met)
        print(f"fedward: left out of this run at the statistics step: {reason}", flush=True)
    preprocessing = task.combine_statistics([s.sums for s in sites], pooled_noise_std(sites))
    shared = {**preprocessing, "run-uid": run_uid}
    run.write_json(
        CONFIG_FILE,
        {
            "run-config": config.to_flower(),
            "run-uid": run_uid,
            "sites": {
                s.site_id: {**s.report, **({"fingerprint": s.fingerprint} if s.fingerprint else {})}
                for s in sites
            },
            "preprocessing": shared,  # what every site applied to its inputs (pooled statistics)
            "flower-run-id": context.run_id,
            "statistics-failures": sorted(failed.values()),  # sites left out of the run, with their reason
            "resumed-after-round": checkpoint.server_round if checkpoint else None,
            "run-inputs": {
                k: {"run": str(f), MANIFEST_FILE: sha256_file(f / MANIFEST_FILE)}
                for k, f in inputs.runs.items()
            },
        },
    )

    # with sampling, a round needs the sampled share of min-sites to train (all of them at fraction 1)
    round_min = min(sample_size(config.fraction_train, config.min_sites), len(sites))
    recorder = RoundRecorder(run, task, sites, config.num_server_rounds, round_min)

    def pool(contents: list[RecordDict], _key: str) -> MetricRecord:
        return MetricRecord(task.pool([dict(c["metrics"]) for c in contents]))

    aggregation = build_strategy(
        config.strategy,
        num_sites=len(sites),
        train_metrics=_train_metrics,
        evaluate_metrics=pool,
        weighted_by_key="site-weight" if config.central_dp else "num-examples",
        settings=StrategySettings.from_config(config),
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
    )
    if config.central_dp:
        aggregation = with_central_dp(
            aggregation,
            noise_multiplier=config.central_dp_noise_multiplier,
            clipping_norm=config.central_dp_clipping_norm,
            num_sites=sample_size(config.fraction_train, len(sites)),  # the sites averaged per round
            delta=config.central_dp_delta,
            max_epsilon=config.central_dp_max_epsilon or None,
            clipping=config.central_dp_clipping,
        )
    limits: dict[int, SiteLimits] = {}  # filled once the model is built (the DP bound needs its size)
    validated = ValidatedStrategy(
        aggregation,
        max_update_norm=config.max_update_norm,
        norm_factor=0.0 if config.secure_aggregation else config.update_norm_factor,  # no update to check
        on_reject=recorder.on_rejections,
        on_reject_evaluate=recorder.on_evaluation_rejections,
        limits=limits.get,
        weight_key="site-weight" if config.central_dp else "num-examples",
        max_site_share=config.max_site_share,
        required_metrics=("epsilon", "epsilon-lifetime", "epsilon-cap"),
        transfer_dtype=config.transfer_dtype,
    )
    seed_everything(config.seed)  # public randomness only: node order, initial weights (never DP noise)
    final = initial = ArrayRecord(task.build_model(config).state_dict())
    limits.update(_site_limits(config, sites, initial, task))
    if config.secure_aggregation:  # the server never holds one site's update: each site clips its own
        limits.update({n: dataclasses.replace(lim, max_update_norm=0.0) for n, lim in limits.items()})
    done = 0
    if checkpoint is not None:
        done = checkpoint.server_round
        restore_strategy_state(validated, checkpoint.strategy)
        recorder.restore(checkpoint.recorder)
        checkpoint.restore_rng()
        final = checkpoint.array_record()
        run.truncate_rounds(done)
        print(f"fedward: resuming after round {done} of {config.num_server_rounds}", flush=True)
    elif config.resume:
        run.truncate_rounds(0)
        print("fedward: no completed round to resume from; starting at round 1", flush=True)
    strategy = ObservedStrategy(
        validated,
        on_train=recorder.on_train,
        on_evaluate=recorder.on_evaluate,
        first_round=done + 1,
        records=inputs.records,
    )
    recorder.node_of = strategy.destination_of
    start_arrays = final

    def save_checkpoint(server_round: int) -> None:
        arrays = recorder.arrays or start_arrays
        snapshot = RoundCheckpoint.capture(server_round, run_uid, arrays, validated, recorder.snapshot())
        snapshot.save(run.path, signing_key)  # signed with the run's key, checked on resume

    recorder.after_round = save_checkpoint
    try:
        if done < config.num_server_rounds:
            result = strategy.start(
                grid=_round_grid(grid, config, sites, limits),  # never a left-out node
                initial_arrays=start_arrays,
                num_rounds=config.num_server_rounds - done,
                train_config=ConfigRecord(shared),
                evaluate_config=ConfigRecord(shared),
            )
            final = result.arrays
    except (RunStopped, PrivacyBudgetExhausted) as stop:
        recorder.stop_reason = recorder.stop_reason or str(stop)
        print(f"fedward: run stopped: {stop}", flush=True)
        final = recorder.arrays or final
    if (bad := non_finite_entry(final)) is not None:  # never saved, signed or sent
        raise FedwardError(f"the final model has non-finite values in {bad!r}; nothing was saved")
    run.save_model(final.to_torch_state_dict())
    last = recorder.last
    global_rows = {s.site_id: (last.get("sites", {}).get(s.site_id) or {}).get("evaluate") for s in sites}
    cross = None
    if recorder.stop_reason is None:
        cross = cross_site_matrix(grid, sites, config, shared, global_rows, initial)
        run.write_json(CROSS_SITE, cross)
    spent = {**recorder.epsilon, **((cross or {}).get("local-epsilon") or {})}  # local-only training too
    local_privacy = (cross or {}).get("local-privacy") or {}
    summary = {
        "task": config.task,
        "strategy": config.strategy,
        "rounds": config.num_server_rounds,
        "rounds-completed": last.get("round", 0),
        "run-uid": run_uid,
        "resumed-after-round": checkpoint.server_round if checkpoint else None,
        "dp": config.dp,
        "dp-seeded-noise": config.dp_seeded_noise,
        "secure-aggregation": config.secure_aggregation,
        "distributed-dp": config.distributed_dp,  # ε against a non-colluding coordinator (docs/privacy.md)
        "stopped": recorder.stop_reason,
        "central-dp": _central_privacy(aggregation),
        "overall": last.get("overall", {}),
        "sites": {
            site: {
                "evaluate": (last.get("sites", {}).get(site) or {}).get("evaluate"),
                "epsilon": spent.get(site),
                **recorder.budget.get(site, {}),
                **_lifetime(local_privacy.get(site)),
                **_statistics_release(sites, site),
                "refused": recorder.refusals.get(site),
                "updates-rejected": recorder.rejection_counts.get(site, 0),
                "delta": (recorder.trained_last.get(site) or {}).get("delta"),
                "privacy-steps": (local_privacy.get(site) or recorder.trained_last.get(site) or {}).get(
                    "privacy-steps"
                ),
                "data": next(s.report for s in sites if s.site_id == site),
            }
            for site in sorted(s.site_id for s in sites)
        },
        "wall-seconds": time.monotonic() - started,
    }
    run.write_json(SUMMARY_FILE, summary)
    recorder.tensorboard.close()
    print(f"fedward: summary written to {run.path / SUMMARY_FILE}", flush=True)
    finalise_run(run.path, signing_key)
    print(f"fedward: model exported and provenance signed: {run.path / 'provenance.json'}", flush=True)
