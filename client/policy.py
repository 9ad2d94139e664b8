"""The hospital's privacy policy for its site, and the check every training round must pass.

The policy is a TOML file set by the site, not by the coordinator. All keys sit, flat and
kebab-case, under one `[policy]` table; unknown keys are errors:

    [policy]
    epsilon-cap = 8.0            # lifetime ε per data set (all runs together), at δ = `delta`
    delta = 1e-5                 # 0 < δ < 1, and δ <= 1/n for the site's n training samples
    min-noise-multiplier = 0.8   # optional, default 0
    clipping-min = 0.1           # allowed range of the per-sample gradient norm bound
    clipping-max = 5.0
    allowed-tasks = ["ckd"]
    min-samples = 100            # fewer training samples: the round does not run
    phi-gate = "block"           # DICOM headers with PHI: "block" (default) or "warn" (client/dicom/gate.py)
    ledger-dir = "ledger"        # optional: the lifetime privacy ledger's folder, relative to this
                                 # file's folder (default: this file's folder); see client/ledger.py
    min-cell-count = 10          # optional, default 10: no evaluation count the site sends describes
                                 # 1..k-1 patients (common/disclosure.py)
    allowed-apps = ["fedward==0.1.0"]  # optional: only these signed apps run here, as
                                 # "name==version" or "sha256:<app digest or FAB hash>"
                                 # (common/app_signature.py; client/app_gate.py)
    secure-aggregation-min-sites = 3  # optional: with secure aggregation, the fewest sites (this one
                                 # included) whose sum this site's update may be part of
                                 # (client/secure_aggregation.py)
    distributed-dp-min-sites = 4  # optional: this site accepts distributed DP (it adds only a share of
                                 # the noise) when every sum holds at least this many sites' noise;
                                 # absent: it refuses distributed DP (common/distributed_dp.py)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedward.common.errors import ConfigError, PrivacyError
from fedward.common.tomlfile import read_toml
from fedward.common.validation_errors import validation_problems

if TYPE_CHECKING:  # the policy module stays light (no torch) for `fedward site policy check`
    from fedward.common.config import RunConfig

POLICY_TABLE = "policy"
ALLOWED_APP_ENTRY = r"^(sha256:[0-9a-f]{64}|[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+)$"


class SitePolicy(BaseModel):
    """Limits a site puts on every training round and on the lifetime ε of each data set."""

    model_config = ConfigDict(
        alias_generator=lambda name: name.replace("_", "-"),
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        strict=True,
    )

    epsilon_cap: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(gt=0, lt=1)
    min_noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False)
    clipping_min: float = Field(gt=0, allow_inf_nan=False)
    clipping_max: float = Field(allow_inf_nan=False)
    allowed_tasks: list[str] = Field(min_length=1)
    min_samples: int = Field(ge=1)
    phi_gate: Literal["block", "warn"] = "block"
    ledger_dir: str | None = Field(None, min_length=1)
    min_cell_count: int = Field(10, ge=1)
    allowed_apps: list[Annotated[str, Field(pattern=ALLOWED_APP_ENTRY)]] | None = Field(None, min_length=1)
    secure_aggregation_min_sites: int | None = Field(None, ge=2)
    distributed_dp_min_sites: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _clipping_range(self) -> SitePolicy:
        if self.clipping_max < self.clipping_min:
            raise ValueError(
                f"clipping-max ({self.clipping_max:g}) must be >= clipping-min ({self.clipping_min:g})"
            )
        return self


def load_policy(path: Path) -> SitePolicy:
    """Read and check a site policy file; every problem is a ConfigError naming file and key."""
    path = Path(path)
    document = read_toml(path, "site policy")
    other = sorted(set(document) - {POLICY_TABLE})
    if other:
        raise ConfigError(f"site policy {path}: unknown key(s) {', '.join(other)}; use a [policy] table")
    table = document.get(POLICY_TABLE)
    if not isinstance(table, dict):
        raise ConfigError(f"site policy {path}: missing [policy] table")
    try:
        return SitePolicy.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, prefix=POLICY_TABLE))
        raise ConfigError(f"site policy {path}: {problems}") from exc


def resolve_ledger_dir(policy: SitePolicy, policy_file: Path) -> Path:
    """The ledger folder of a site with a policy: `ledger-dir` (relative to the policy file's folder),
    else the policy file's folder itself."""
    folder = Path(policy_file).expanduser().parent
    return folder / Path(policy.ledger_dir).expanduser() if policy.ledger_dir else folder


def min_cell_count(policy: SitePolicy | None, config: RunConfig) -> int:
    """The minimum cell count of the site's evaluation releases: the stricter of its policy's
    `min-cell-count` and the run's; the run's alone for a site without a policy (simulations)."""
    return config.min_cell_count if policy is None else max(policy.min_cell_count, config.min_cell_count)


def validate_policy_for(policy: SitePolicy, num_samples: int) -> None:
    """Reject a policy whose δ is above 1/n for a data set of `num_samples` training samples."""
    if num_samples < 1:
        raise PrivacyError("a site needs at least one training sample to train privately")
    if policy.delta * num_samples >= 1:
        raise PrivacyError(
            f"site policy delta {policy.delta:g} is not below 1/n = {1 / num_samples:.3g} for "
            f"n = {num_samples} training patients; set delta < 1/n"
        )


def check_round(
    policy: SitePolicy,
    *,
    task: str,
    num_samples: int,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    projected_epsilon: float,
) -> str | None:
    """Why the site refuses this round (every broken rule, '; '-joined), or None when allowed.

    `projected_epsilon` is the data set's lifetime ε after the round, composed over the ledger
    plus the round's planned steps; compose it at `policy.delta` so the cap means the same for
    every run, whatever δ the run asked for.
    """
    reasons: list[str] = []
    if task not in policy.allowed_tasks:
        reasons.append(
            f"task {task!r} is not allowed at this site (allowed: {', '.join(policy.allowed_tasks)})"
        )
    # the reasons go to the coordinator: they name rules and limits, never the site's exact size
    if num_samples < policy.min_samples:
        reasons.append(f"fewer training patients than the site minimum of {policy.min_samples}")
    if num_samples >= 1 and delta * num_samples >= 1:
        reasons.append(f"delta {delta:g} is not below 1/n for this site's number of training patients")
    if not 0 < delta <= policy.delta:
        reasons.append(f"delta {delta:g} is outside (0, {policy.delta:g}], the site policy delta")
    if not noise_multiplier > 0:
        reasons.append(f"noise multiplier {noise_multiplier:g}: training without noise has unbounded epsilon")
    elif noise_multiplier < policy.min_noise_multiplier:
        reasons.append(
            f"noise multiplier {noise_multiplier:g} is below the site minimum {policy.min_noise_multiplier:g}"
        )
    if not policy.clipping_min <= max_grad_norm <= policy.clipping_max:
        reasons.append(
            f"clipping bound (max grad norm) {max_grad_norm:g} is outside the allowed range "
            f"[{policy.clipping_min:g}, {policy.clipping_max:g}]"
        )
    if math.isnan(projected_epsilon) or projected_epsilon > policy.epsilon_cap:
        reasons.append(
            f"projected lifetime epsilon {projected_epsilon:.3g} after this round would exceed the site's "
            f"epsilon cap of {policy.epsilon_cap:g} for this data set"
        )
    return "; ".join(reasons) or None
