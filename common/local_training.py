"""A site's local optimisation settings for one round (no torch: the config and the CLI import it)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class LocalTraining:
    """Local optimisation settings for one round at one site."""

    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.1
    seed: int = 0  # public randomness only: shuffling without DP, hostile-site simulation
    optimizer: str = "sgd"  # or "adam" (DP-Adam under Opacus)
    seeded_noise: bool = False  # research switch: DP noise and sampling from `seed` (simulation only)
