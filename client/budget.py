"""A site's privacy budget: plan the round, check it against the site policy and the lifetime ledger
and reserve its steps *before* any training step (one transaction), settle what was really spent after."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, RecordDict

from fedward.client.ledger import PrivacyLedger, dataset_identity, keyed_fingerprint
from fedward.client.policy import SitePolicy, check_round, load_policy, resolve_ledger_dir
from fedward.common.config import RunConfig
from fedward.common.errors import PrivacyError
from fedward.common.privacy import Mechanism, PrivacyHistory, plan_mechanism, resolve_delta

if TYPE_CHECKING:
    from fedward.common.tasks.base import SiteData

NO_DP = "the site policy requires differential privacy; the run asks for dp = false"
CALIBRATION_STATE = "dp-calibration"
"""`context.state` record of the σ calibrated for this run: {sha256 of its inputs: σ}. σ is public to the
site (it is sent with every update) and a deterministic function of those inputs, not randomness, so a
later message (a fresh ClientApp process in deployment, or a resumed run: client/run_state.py) reuses it
instead of re-running seconds of accountant bisection."""


@dataclass(frozen=True)
class SitePrivacy:
    """The site's per-run state dir and the policy it enforces (both optional); the policy file is read
    and checked once, here, for the whole message."""

    state_dir: Path | None = None
    policy_file: Path | None = None
    policy: SitePolicy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.policy is None and self.policy_file is not None:
            object.__setattr__(self, "policy", load_policy(self.policy_file))

    def ledger_dir(self, policy: SitePolicy | None) -> Path | None:
        """Where the lifetime ledger lives: where the site policy says (`ledger-dir`, default the policy
        file's folder) when there is one, else the state dir (simulations); None: no ledger."""
        if self.policy_file is not None and policy is not None:
            return resolve_ledger_dir(policy, self.policy_file)
        return self.state_dir


class SiteBudget:
    """Policy + ledger of one site for one data set (identified by its patient keys)."""

    def __init__(self, settings: SitePrivacy, site: SiteData | None) -> None:
        self.policy: SitePolicy | None = settings.policy
        self._keys = list(site.patient_keys) if site else []
        self._identity = dataset_identity(self._keys)
        folder = settings.ledger_dir(self.policy)
        self.ledger = PrivacyLedger(folder) if folder is not None and self._keys else None
        self.releases_dir = folder / "releases" if self.ledger is not None else None  # kept noisy releases
        self.fingerprint: str | None = self._identity if self.ledger else None
        self.public_fingerprint = keyed_fingerprint(
            self._identity, self.ledger.site_secret() if self.ledger else None
        )
        self._reservation: str | None = None
        self._composed_at: tuple[float, str] | None = (self.policy.delta, "prv") if self.policy else None

    def plan(
        self,
        config: RunConfig,
        num_train: int,
        spent: tuple[tuple[float, float, int], ...] = (),
        state: RecordDict | None = None,
    ) -> Mechanism | None:
        """The round's mechanism (None without DP). The site's δ is its policy's when it has one. σ is
        calibrated so that the run's target ε covers its planned steps after the run's earlier releases
        `spent` (the statistics, when this run drew them); with the run's `state` (`context.state`), a σ
        calibrated earlier from the same inputs is reused and a new one is kept there."""
        if not config.dp:
            return None
        delta = self.policy.delta if self.policy else resolve_delta(config.dp_delta, num_train)
        record = state.config_records.get(CALIBRATION_STATE) if state is not None else None
        known = {k: float(v) for k, v in record.items()} if record is not None else {}  # type: ignore[arg-type]
        calibrated = dict(known)
        full_batch = config.distributed_dp  # one full-batch gradient step a round (distributed_dp.py)
        mechanism = plan_mechanism(
            config.privacy,
            num_examples=num_train,
            batch_size=num_train if full_batch else config.batch_size,
            epochs=1 if full_batch else config.local_epochs,
            delta=delta,
            planned_rounds=config.num_server_rounds,
            spent=spent,
            calibrated=calibrated,
        )
        if state is not None and calibrated != known:
            state[CALIBRATION_STATE] = ConfigRecord(calibrated)  # the current inputs' σ only
        return mechanism

    def refusal(
        self, config: RunConfig, plan: Mechanism | None, num_train: int, run_history: PrivacyHistory
    ) -> str | None:
        """Why this round must not run, or None; reserves nothing (for baselines without a ledger:
        a site's rounds go through `reserve`)."""
        if self.policy is None:
            return None
        if plan is None:
            return NO_DP
        projected = PrivacyHistory(list(self.history(run_history).entries))
        projected.extend(plan.entries)
        return self._rules(config, plan, num_train)(projected.epsilon(plan.delta, config.dp_accountant))

    def reserve(
        self,
        config: RunConfig,
        plan: Mechanism | None,
        num_train: int,
        run_history: PrivacyHistory,
        run_id: str,
        server_round: int,
        label: str = "train",
    ) -> str | None:
        """Policy rules, lifetime cap check and reservation of the planned steps, atomically (one ledger
        transaction); the refusal reason, or None when the round may train. Call `settle` after it.
        `label` names what the steps are and against whom their ε holds (the ledger keeps it)."""
        if plan is None:
            return NO_DP if self.policy is not None else None
        self._composed_at = (plan.delta, config.dp_accountant)
        if self.ledger is None or self.fingerprint is None:
            return self.refusal(config, plan, num_train, run_history)
        check = self._rules(config, plan, num_train) if self.policy is not None else None
        token, reason = self.ledger.reserve(
            self.fingerprint, self._keys, run_id, server_round, plan.entries, plan.delta,
            config.dp_accountant, config.task, check, label,
        )  # fmt: skip
        self._reservation = token
        return reason

    def settle(self, entries: list[tuple[float, float, int]]) -> None:
        """Replace the round's reservation by the steps really taken (no-op without a ledger)."""
        if self.ledger is None:
            return
        if self._reservation is None:
            raise PrivacyError("settle() without a reservation: call reserve() before training")
        token, self._reservation = self._reservation, None
        self.ledger.settle(token, entries)

    def spend(
        self,
        config: RunConfig,
        entries: list[tuple[float, float, int]],
        delta: float,
        run_id: str,
        label: str,
    ) -> str | None:
        """A one-off release (e.g. noised statistics): lifetime cap check and record in one transaction;
        the refusal reason, or None when it was recorded (or allowed, without a ledger)."""
        at = self.policy.delta if self.policy else delta
        check = self._cap_check if self.policy is not None else None
        if self.ledger is None or self.fingerprint is None:
            if check is None:
                return None
            from fedward.common.privacy import compose_epsilon

            return check(compose_epsilon(entries, at, config.dp_accountant))
        return self.ledger.spend_within(
            self.fingerprint, self._keys, run_id, 0, entries, delta, config.dp_accountant, config.task,
            label, check, compose_delta=at,
        )  # fmt: skip

    def history(self, run_history: PrivacyHistory) -> PrivacyHistory:
        """Everything this data set's most-spent patients have spent (ledger), else this run's history."""
        if self.ledger is not None and self.fingerprint is not None:
            delta, accountant = self._composed_at or (None, "prv")
            return self.ledger.history(self.fingerprint, self._keys, delta, accountant)
        return run_history

    def _rules(self, config: RunConfig, plan: Mechanism, num_train: int):
        """check_round of the site policy for this round, as a function of the projected lifetime ε."""
        policy = self.policy
        assert policy is not None

        def check(projected_epsilon: float) -> str | None:
            return check_round(
                policy,
                task=config.task,
                num_samples=num_train,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=config.dp_max_grad_norm,
                delta=plan.delta,
                projected_epsilon=projected_epsilon,
            )

        return check

    def _cap_check(self, projected_epsilon: float) -> str | None:
        cap = self.cap()
        if math.isnan(projected_epsilon) or projected_epsilon > cap:
            return (
                f"projected lifetime epsilon {projected_epsilon:.3g} would exceed the site's epsilon cap "
                f"of {cap:g} for this data set"
            )
        return None

    def cap(self) -> float:
        """The policy's lifetime ε cap (inf without a policy)."""
        return self.policy.epsilon_cap if self.policy else math.inf
