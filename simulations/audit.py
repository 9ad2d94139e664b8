"""`fedward sim audit`: measure what an adversary learns about one site's training, beside its claimed ε.

One simulated site holds m gradient canaries (common/audit/canaries.py), each included by a secret coin.
After the run, adversaries score every canary; the one-run bound (common/audit/one_run.py) turns their
correct guesses into an ε lower bound at 95 % confidence:

- the coordinator (white-box, docs/privacy.md's threat model): sees every site's update each round;
  score = the audited site's update along the canary's direction, minus the other sites' mean there;
- the recipient of the final model: sees the initial and the final global model only;
- with the `dp-seeded-noise` research switch, the coordinator who knows the run seed: replays the
  site's DP noise from the seed and removes it before scoring (the positive control: a leak).

Membership inference (loss attack) on the final model measures real patients: every site's training
records against every site's held-out records.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from fedward.client.audit_mod import OBSERVED
from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.common.audit.canaries import GradientCanaries, draw_canaries
from fedward.common.audit.membership import attack_metrics
from fedward.common.audit.one_run import AuditBound, audit_bound
from fedward.common.config import RunConfig
from fedward.common.tasks import get_task
from fedward.common.training import predict_proba, privacy_generator
from fedward.server.rundir import CONFIG_FILE, MODEL_FILE, SUMMARY_FILE, RunDirectory

SUMMARY_KEY = "empirical-privacy"  # in summary.json
REFERENCE_MODELS = 8  # offline LiRA's reference models


def parameter_shapes(config: RunConfig) -> dict[str, tuple[int, ...]]:
    """The trainable parameters of the run's model, in the order the DP optimiser visits them."""
    model = get_task(config.task).build_model(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}


def prepare_canaries(config: RunConfig, folder: Path, count: int) -> GradientCanaries:
    """Draw the canaries for the run's model (at most one per coordinate) and write them to `folder`."""
    shapes = parameter_shapes(config)
    canaries = draw_canaries(shapes, min(count, sum(int(np.prod(s)) for s in shapes.values())))
    canaries.save(folder)
    return canaries


def _observations(folder: Path) -> dict[int, dict[int, dict[str, np.ndarray]]]:
    """round → partition → the arrays recorded for that site's update."""
    rounds: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for path in sorted((folder / OBSERVED).glob("round-*-site-*.npz")):
        _, server_round, _, partition = path.stem.split("-")
        with np.load(path) as data:
            rounds.setdefault(int(server_round), {})[int(partition)] = {k: data[k] for k in data.files}
    if not rounds:
        raise ValueError(f"no observed updates in {folder / OBSERVED}: did the audited site train?")
    return rounds


def coordinator_scores(
    rounds: Mapping[int, Mapping[int, Mapping[str, np.ndarray]]], canaries: GradientCanaries, audited: int
) -> np.ndarray:
    """Σ over rounds of −sign · (audited site's update − the other sites' mean) at each canary."""
    total = np.zeros(canaries.count)
    for sites in rounds.values():
        if audited not in sites:
            continue
        others = [v["canary-update"] for p, v in sites.items() if p != audited]
        reference = np.mean(others, axis=0) if others else 0.0
        total += sites[audited]["canary-update"] - reference
    return -canaries.signs * total  # a canary's gradient step moves its coordinate against its sign


def final_model_scores(
    canaries: GradientCanaries, initial: Mapping[str, np.ndarray], final: Mapping[str, np.ndarray]
) -> np.ndarray:
    """−sign · (final − initial) at each canary: all the final model's recipient can compute."""
    return -canaries.signs * (canaries.values(final) - canaries.values(initial))


def replayed_noise(
    config: RunConfig,
    server_round: int,
    partition: int,
    steps: int,
    sigma: float,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """The sum of the DP noise a site drew in a round, replayed from the run seed: possible only under the
    `dp-seeded-noise` research switch (the knowing coordinator's attack; common/training.py)."""
    from opacus.optimizers.optimizer import _generate_noise

    seed = config.local_training(server_round, partition).seed + 1  # the noise generator's seed
    generator = privacy_generator("cpu", seed)
    std = sigma * config.dp_max_grad_norm
    total = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in shapes.items()}
    for _ in range(steps):
        for name, shape in shapes.items():
            reference = torch.zeros(shape)
            total[name] += _generate_noise(std, reference, generator=generator, secure_mode=True).double()
    return {name: t.numpy() for name, t in total.items()}


def _cleaned(
    config: RunConfig,
    server_round: int,
    partition: int,
    seen: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """A site's update with its replayed noise removed: the update is −a·(Σ gradients + Σ noise) for an
    unknown step scale a (lr over the expected batch), fitted by least squares on the noise."""
    update = {k[len("update/") :]: v for k, v in seen.items() if k.startswith("update/")}
    steps, sigma = int(seen["steps"]), float(seen["noise-multiplier"])
    noise = replayed_noise(config, server_round, partition, steps, sigma, shapes)
    u = np.concatenate([update[k].ravel() for k in shapes])
    z = np.concatenate([noise[k].ravel() for k in shapes])
    scale = -float(u @ z) / float(z @ z) if float(z @ z) > 0 else 0.0
    return {k: update[k] + scale * noise[k] for k in shapes}


def knowing_coordinator_scores(
    rounds: Mapping[int, Mapping[int, Mapping[str, np.ndarray]]],
    canaries: GradientCanaries,
    config: RunConfig,
    audited: int,
    shapes: Mapping[str, tuple[int, ...]],
) -> np.ndarray:
    """The coordinator's scores after removing every site's replayed noise (the audited site's and the
    reference sites')."""
    total = np.zeros(canaries.count)
    for server_round, sites in sorted(rounds.items()):
        if audited not in sites:
            continue
        clean = {
            p: canaries.values(_cleaned(config, server_round, p, seen, shapes)) for p, seen in sites.items()
        }
        others = [v for p, v in clean.items() if p != audited]
        total += clean[audited] - (np.mean(others, axis=0) if others else 0.0)
    return -canaries.signs * total


def _bound_entry(bound: AuditBound) -> dict[str, Any]:
    return {
        "epsilon-lower-bound": round(bound.epsilon, 4),
        "guesses": bound.guesses,
        "correct": bound.correct,
    }


def _confidence(model: torch.nn.Module, dataset: Dataset) -> np.ndarray:
    """Each record's logit-scaled confidence in its true class, log(p / (1 − p)) (Carlini et al.)."""
    probs, labels = predict_proba(model, dataset)
    p = np.clip(probs[np.arange(len(labels)), labels].astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def membership_inference(
    config: RunConfig,
    final_state: Mapping[str, torch.Tensor],
    preprocessing: dict[str, Any],
    data_root: Path,
    num_sites: int,
    references: int = REFERENCE_MODELS,
) -> dict[str, Any]:
    """Membership inference on the final model: every site's training records (members) against every
    site's held-out records (non-members).

    Offline LiRA (Carlini et al. 2022): `references` models are trained by the same code and settings
    on random halves of all those records; a record's score is how far the final model's confidence in it
    lies above its confidence under the reference models that did not train on it (a Gaussian fit).
    Without references the score is the confidence itself (a loss attack)."""
    from fedward.simulations.baselines import initial_model, load_sites, train_rounds

    task = get_task(config.task)
    final = task.build_model(config)
    final.load_state_dict(final_state)
    splits = [task.datasets(site, preprocessing) for site in load_sites(config, data_root, num_sites)]
    population = ConcatDataset([train for train, _ in splits] + [test for _, test in splits])
    member = np.zeros(len(population), dtype=bool)
    member[: sum(len(train) for train, _ in splits)] = True
    target = _confidence(final, population)
    if references < 2:
        return {**attack_metrics(target[member], target[~member]), "attack": "loss"}
    rng = np.random.default_rng(secrets.randbits(128))
    out_scores: list[list[float]] = [[] for _ in range(len(population))]
    if config.dp and config.dp_delta * len(population) / 2 > 1:  # the run's δ suits the sites, not the halves
        config = config.model_copy(update={"dp_delta": 0.0})
    for _ in range(references):
        trained_on = rng.random(len(population)) < 0.5
        model = initial_model(task, config)
        subset = Subset(population, np.flatnonzero(trained_on).tolist())
        train_rounds(task, config, model, subset, SiteBudget(SitePrivacy(), []), 0, torch.device("cpu"))
        for index, value in zip(
            np.flatnonzero(~trained_on), _confidence(model, population)[~trained_on], strict=True
        ):
            out_scores[index].append(float(value))
    mean = np.array([np.mean(v) if v else 0.0 for v in out_scores])
    spread = np.array([np.std(v) if len(v) > 1 else 1.0 for v in out_scores]) + 1e-6
    score = (target - mean) / spread
    return {
        **attack_metrics(score[member], score[~member]),
        "attack": "lira-offline",
        "reference-models": references,
    }


def analyse(run_dir: Path, audit_dir: Path, config: RunConfig, num_sites: int) -> dict[str, Any]:
    """The audit of a finished run: bounds per adversary, membership inference; recorded in summary.json."""
    run = RunDirectory.existing(run_dir)
    summary = run.read_json(SUMMARY_FILE)
    site_id = f"site-{config.audit_site}"
    site = summary["sites"].get(site_id) or {}
    claimed = site.get("epsilon")
    delta = float(site.get("delta") or 0.0)
    canaries = GradientCanaries.load(audit_dir, with_coins=True)
    assert canaries.included is not None
    rounds = _observations(audit_dir)
    first = rounds[min(rounds)][config.audit_site]
    initial = {k[len("initial/") :]: v for k, v in first.items() if k.startswith("initial/")}
    final_state = torch.load(run.path / MODEL_FILE, weights_only=True)
    final = {k: v.numpy() for k, v in final_state.items()}
    adversaries = {
        "coordinator": audit_bound(
            coordinator_scores(rounds, canaries, config.audit_site), canaries.included, delta=delta
        ),
        "final-model": audit_bound(
            final_model_scores(canaries, initial, final), canaries.included, delta=delta
        ),
    }
    if config.dp and config.dp_seeded_noise:
        shapes = parameter_shapes(config)
        scores = knowing_coordinator_scores(rounds, canaries, config, config.audit_site, shapes)
        adversaries["coordinator-knowing-seed"] = audit_bound(scores, canaries.included, delta=delta)
    bound = max(b.epsilon for b in adversaries.values())
    claimed_value = None if claimed is None or not np.isfinite(claimed) else float(claimed)
    result = {
        "method": "one-run canary audit (Steinke, Nasr & Jagielski 2023), Dirac gradient canaries",
        "run": run_dir.name,
        "site": site_id,
        "claimed": {
            "epsilon": claimed_value,
            "delta": delta,
            "dp": config.dp,
            "dp-seeded-noise": config.dp_seeded_noise,
        },
        "canaries": canaries.count,
        "canaries-included": int(canaries.included.sum()),
        "confidence": 0.95,
        "adversaries": {name: _bound_entry(b) for name, b in adversaries.items()},
        "epsilon-lower-bound": round(bound, 4),
        "leak": claimed_value is not None and bound > claimed_value,
        "membership-inference": membership_inference(
            config,
            final_state,
            run.read_json(CONFIG_FILE)["preprocessing"],
            Path(config.data_root),
            num_sites,
        ),
    }
    record_audit(run, summary, result)
    return result


def record_audit(run: RunDirectory, summary: dict[str, Any], result: dict[str, Any]) -> None:
    """Put the audit into the run's summary.json (key "empirical-privacy") and sign the run again: the
    model card is rewritten with it and the provenance manifest covers the changed summary."""
    from fedward.server.export import finalise_run

    run.write_json(SUMMARY_FILE, {**summary, SUMMARY_KEY: result})
    finalise_run(run.path)
