"""A site's privacy budget: plan the round, check it against the site policy and the lifetime
ledger *before* any training step, and record what was really spent afterwards."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from client.ledger import PrivacyLedger, dataset_fingerprint
from client.policy import SitePolicy, check_round, load_policy
from common.config import RunConfig
from common.privacy import PrivacyHistory, resolve_delta, resolve_noise_multiplier
from common.training import steps_per_epoch


@dataclass(frozen=True)
class RoundPlan:
    """The DP-SGD mechanism one round will run: σ, Poisson rate q, steps, δ."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float

    @property
    def entries(self) -> list[tuple[float, float, int]]:
        """As accountant history entries."""
        return [(self.noise_multiplier, self.sample_rate, self.steps)]


@dataclass(frozen=True)
class SitePrivacy:
    """Where the site keeps its ledger and which policy it enforces (both optional)."""

    state_dir: Path | None = None
    policy_file: Path | None = None


class SiteBudget:
    """Policy + ledger of one site for one data set."""

    def __init__(self, settings: SitePrivacy, data_paths: list[Path]) -> None:
        self.policy: SitePolicy | None = (
            load_policy(settings.policy_file) if settings.policy_file is not None else None
        )
        self.ledger = PrivacyLedger(settings.state_dir) if settings.state_dir is not None else None
        self.fingerprint = dataset_fingerprint(data_paths) if self.ledger and data_paths else None

    def plan(self, config: RunConfig, num_train: int) -> RoundPlan | None:
        """The round's mechanism (None without DP). The site's δ is its policy's when it has one."""
        if not config.dp:
            return None
        per_epoch = steps_per_epoch(num_train, config.batch_size)
        delta = self.policy.delta if self.policy else resolve_delta(config.dp_delta, num_train)
        sigma = resolve_noise_multiplier(
            config.privacy,
            delta=delta,
            sample_rate=1.0 / per_epoch,
            planned_steps=config.num_server_rounds * config.local_epochs * per_epoch,
        )
        return RoundPlan(sigma, 1.0 / per_epoch, config.local_epochs * per_epoch, delta)

    def refusal(
        self, config: RunConfig, plan: RoundPlan | None, num_train: int, run_history: PrivacyHistory
    ) -> str | None:
        """Why this round must not run, or None. Checked before any training step."""
        if self.policy is None:
            return None
        if plan is None:
            return "the site policy requires differential privacy; the run asks for dp = false"
        past = self.history(run_history)
        projected = PrivacyHistory(list(past.entries))
        projected.extend(plan.entries)
        return check_round(
            self.policy,
            task=config.task,
            num_samples=num_train,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=config.dp_max_grad_norm,
            delta=plan.delta,
            projected_epsilon=projected.epsilon(plan.delta, config.dp_accountant),
        )

    def history(self, run_history: PrivacyHistory) -> PrivacyHistory:
        """Everything this data set has spent: the ledger's lifetime history, or this run's."""
        if self.ledger is not None and self.fingerprint is not None:
            return self.ledger.history(self.fingerprint)
        return run_history

    def record(
        self, run_id: str, server_round: int, entries: list[tuple[float, float, int]], plan: RoundPlan, config
    ) -> None:
        """Add the steps really taken to the lifetime ledger (no-op without a state dir)."""
        if self.ledger is not None and self.fingerprint is not None and entries:
            self.ledger.record(
                self.fingerprint, run_id, server_round, entries, plan.delta, config.dp_accountant, config.task
            )

    def cap(self) -> float:
        """The policy's lifetime ε cap (inf without a policy)."""
        return self.policy.epsilon_cap if self.policy else math.inf
