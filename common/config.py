"""The run configuration: `[tool.flwr.app.config]` keys (kebab-case), typed and checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedward.common.errors import ConfigError
from fedward.common.local_training import LocalTraining
from fedward.common.privacy import DPConfig
from fedward.common.validation_errors import validation_problems


class RunConfig(BaseModel):
    """Everything the coordinator sets for a run. Defaults equal pyproject.toml's (tested)."""

    model_config = ConfigDict(
        alias_generator=lambda name: name.replace("_", "-"), populate_by_name=True, frozen=True
    )

    task: str = "ckd"
    num_server_rounds: int = Field(10, ge=1)
    strategy: str = "fedavg"
    min_sites: int = Field(2, ge=1)
    # sites sampled per round (public, the coordinator's draw; no privacy amplification is claimed):
    # max(1, ceil(fraction × sites)) train / evaluate each round (strategies/registry.py)
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.5, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    model: str = "mlp"
    dp: bool = True
    dp_target_epsilon: float = Field(3.0, ge=0)
    dp_noise_multiplier: float = Field(0.0, ge=0)
    dp_delta: float = Field(0.0, ge=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, gt=0)
    dp_accountant: str = "prv"
    # σ of the one-off federated statistics release; 0: the task's own (`Task.statistics_noise_multiplier`)
    dp_statistics_noise_multiplier: float = Field(0.0, ge=0)
    dp_seeded_noise: bool = False  # research switch, simulation only: replayable noise (docs/privacy.md)
    central_dp: bool = False
    central_dp_noise_multiplier: float = Field(2.0, gt=0)  # z; 10 rounds at δ 1e-5 spend ε ≈ 8.1
    central_dp_clipping: Literal["adaptive", "fixed"] = "adaptive"
    central_dp_clipping_norm: float = Field(1.0, gt=0)  # fixed C, or the initial C when adaptive
    central_dp_delta: float = Field(1e-5, gt=0, lt=1)  # refused unless < 1/number of sites
    central_dp_max_epsilon: float = Field(10.0, ge=0)  # stop before a release would pass it; 0 = no cap
    # secure aggregation (SecAgg+, common/secure_aggregation.py): the coordinator sees only the sum
    secure_aggregation: bool = False
    secure_aggregation_threshold: float = Field(0.66, gt=0, le=1)  # share of a round's sites that unmask
    secure_aggregation_clipping_range: float = Field(8.0, gt=0)  # weighted coordinates clipped to ±this
    secure_aggregation_bits: int = Field(22, ge=2, le=30)  # quantisation levels 2^bits in the ring 2^32
    distributed_dp: bool = False  # each site adds a noise share, the sum carries it all (distributed_dp.py)
    # aggregation strategy parameters (see strategies/registry.py)
    proximal_mu: float = Field(0.01, ge=0)
    server_lr: float = Field(0.0, ge=0)
    server_momentum: float = Field(0.9, ge=0, lt=1)
    server_beta_1: float = Field(0.9, ge=0, lt=1)
    server_beta_2: float = Field(0.99, ge=0, lt=1)
    server_tau: float = Field(0.001, gt=0)
    trim_beta: float = Field(0.2, ge=0, lt=0.5)
    num_malicious_sites: int = Field(0, ge=0)
    multikrum_select: int = Field(0, ge=0)
    # update validation on the server, before any aggregation
    max_update_norm: float = Field(0.0, ge=0)
    update_norm_factor: float = Field(10.0, ge=0)
    max_site_share: float = Field(0.5, gt=0, le=1)  # most of the weighted average one site may have
    examples_tolerance: float = Field(0.1, ge=0)  # num-examples may exceed the statistics count by this
    # hostile sites, honoured only in simulation (no node config data-dir)
    hostile_sites: str = ""
    hostile_mode: Literal["sign-flip", "scale", "random", "label-flip"] = "sign-flip"
    hostile_scale: float = Field(10.0, gt=0)
    # simulated faults, honoured only in simulation (no node config data-dir): client/simulated_faults.py
    sim_dropout: float = Field(0.0, ge=0, lt=1)
    sim_stragglers: str = ""
    sim_straggler_seconds: float = Field(0.0, ge=0)
    # privacy audit, honoured only in simulation (`fedward sim audit`, client/audit_mod.py)
    audit_dir: str = ""  # the audit's folder: canaries, coins, the coordinator's observations
    audit_site: int = Field(0, ge=0)  # partition of the site that holds the canaries
    data_root: str = ""
    partition: str = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    runs_dir: str = "runs"
    run_name: str = ""
    resume: bool = False
    cross_site_local: bool = False
    min_cell_count: int = Field(0, ge=0)  # evaluation small-cell control (common/disclosure.py); 0 = exact
    device: str = "auto"
    transfer_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # common/transfer.py
    image_size: int = Field(32, ge=8)
    image_depth: int = Field(16, ge=0)
    mri_contrasts: str = "t1,t1ce,t2,flair"
    tumour_binary: bool = False
    # tumour-pipeline: folder of a finished tumour-seg run at the coordinator (its final model segments)
    segmenter_run: str = ""

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse Flower's `context.run_config`; unknown keys and bad values raise ConfigError."""
        known = {f.alias or name for name, f in cls.model_fields.items()}
        unknown = sorted(set(run_config) - known)
        if unknown:
            raise ConfigError(f"unknown run config key(s): {', '.join(unknown)}")
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as exc:
            raise ConfigError(f"invalid run config: {'; '.join(validation_problems(exc))}") from exc

    def to_flower(self) -> dict[str, Any]:
        """Kebab-case dict, as in `[tool.flwr.app.config]`."""
        return self.model_dump(by_alias=True)

    @property
    def privacy(self) -> DPConfig:
        """The DP-SGD settings of this run."""
        return DPConfig(
            enabled=self.dp,
            target_epsilon=self.dp_target_epsilon,
            noise_multiplier=self.dp_noise_multiplier,
            delta=self.dp_delta,
            max_grad_norm=self.dp_max_grad_norm,
            accountant=self.dp_accountant,
        )

    @model_validator(mode="after")
    def _secure_aggregation(self) -> RunConfig:
        if self.secure_aggregation:  # flwr and cryptography: imported only when needed (`--help` stays fast)
            from fedward.common.secure_aggregation import check_config

            check_config(self)
        if self.distributed_dp:
            from fedward.common.distributed_dp import check_config as check_distributed

            check_distributed(self)
        return self

    @field_validator("hostile_sites", "sim_stragglers", mode="before")
    @classmethod
    def _partition_ids(cls, value: str | int) -> str:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value  # -c k=0
        if not isinstance(value, str):
            raise ValueError(f"expected a comma list of partition ids, got {value!r}")
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"expected a comma list of partition ids, got {value!r}")
        return ",".join(parts)

    @property
    def hostile_partitions(self) -> frozenset[int]:
        """Partition ids of the simulated sites told to act hostile."""
        return frozenset(int(p) for p in self.hostile_sites.split(",") if p)

    def local_training(self, server_round: int, site_index: int) -> LocalTraining:
        """Local optimisation settings, seeded per run, round and site."""
        seed = (self.seed * 1_000_003 + server_round * 1_009 + site_index) % (2**31)
        return LocalTraining(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            optimizer=self.optimizer,
            seeded_noise=self.dp_seeded_noise,
        )
