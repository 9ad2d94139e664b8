"""Gradient canaries for the one-run audit: Dirac canaries (Nasr et al., "Tight Auditing of Differentially
Private Machine Learning", USENIX Security 2023), the worst case for DP-SGD.

Canary i is a virtual training record whose clipped per-sample gradient is ±C on a single parameter
coordinate (C: the clipping norm). Each is in the site's training set with probability ½ (a secret coin
from OS entropy); an included canary is sampled like a patient — under DP Poisson-sampled into each
step at the step's rate, its gradient joining the clipped sum before Opacus adds the noise; without DP in
exactly one shuffled batch of every epoch, as one more example of the batch's mean. The coordinates and signs
are public: the adversary is assumed to know them, only the coins are secret.

Only the simulation-only audit mod (client/audit_mod.py) sets `active_canaries`; a deployed site never
does, so `common/training.py` injects nothing there.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PUBLIC_FILE = "canaries.json"  # coordinates and signs: what the adversary knows
SECRET_FILE = "coins.json"  # the coins: read by the site and, after the run, by the auditor only


@dataclass(frozen=True)
class GradientCanaries:
    """m Dirac canaries on the model's trainable parameters."""

    parameters: tuple[str, ...]  # the parameter each canary's coordinate lies in
    indices: np.ndarray  # flat index inside that parameter
    signs: np.ndarray  # ±1
    included: np.ndarray | None = None  # the secret coins (None: the adversary's view)

    @property
    def count(self) -> int:
        return len(self.parameters)

    def save(self, folder: Path) -> None:
        """Write the public part and the coins side by side (two files: who reads which differs)."""
        folder.mkdir(parents=True, exist_ok=True)
        public = {"parameters": list(self.parameters), "indices": self.indices.tolist(),
                  "signs": self.signs.tolist()}  # fmt: skip
        (folder / PUBLIC_FILE).write_text(json.dumps(public))
        if self.included is not None:
            (folder / SECRET_FILE).write_text(json.dumps([bool(c) for c in self.included]))

    @classmethod
    def load(cls, folder: Path, *, with_coins: bool) -> GradientCanaries:
        """The canaries of an audit folder; the coins only when `with_coins`."""
        public = json.loads((folder / PUBLIC_FILE).read_text())
        coins = json.loads((folder / SECRET_FILE).read_text()) if with_coins else None
        return cls(
            tuple(public["parameters"]),
            np.asarray(public["indices"], dtype=np.int64),
            np.asarray(public["signs"], dtype=np.float64),
            None if coins is None else np.asarray(coins, dtype=bool),
        )

    def values(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each canary's coordinate read from `arrays` (parameter name → array)."""
        return np.array(
            [np.ravel(arrays[name])[i] for name, i in zip(self.parameters, self.indices, strict=True)],
            dtype=np.float64,
        )


def draw_canaries(shapes: Mapping[str, tuple[int, ...]], count: int) -> GradientCanaries:
    """`count` canaries on distinct coordinates of the parameters `shapes` (name → shape), with random
    signs and coins, all from OS entropy."""
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    total = sum(sizes.values())
    if not 2 <= count <= total:
        raise ValueError(
            f"an audit needs 2 to {total} canaries for this model (one coordinate each), got {count}"
        )
    rng = np.random.default_rng(secrets.randbits(128))
    flat = np.sort(rng.choice(total, size=count, replace=False))
    offsets = np.cumsum([0, *sizes.values()])
    names = list(sizes)
    which = np.searchsorted(offsets, flat, side="right") - 1
    return GradientCanaries(
        tuple(names[k] for k in which),
        flat - offsets[which],
        rng.choice([-1.0, 1.0], size=count),
        rng.random(count) < 0.5,
    )


class CanaryInjection:
    """The included canaries' gradient for one step: each sampled at rate `sample_rate`."""

    def __init__(self, canaries: GradientCanaries, norm: float) -> None:
        if canaries.included is None:
            raise ValueError("a site injects canaries only with their coins")
        self.canaries = canaries
        self.norm = norm
        self.rng = np.random.default_rng(secrets.randbits(128))  # sampling: OS entropy, as the loader's
        self._batch_of: np.ndarray | None = None  # without DP: each canary's batch in this epoch

    def step_gradient(self, grads: Mapping[str, torch.Tensor], sample_rate: float, scale: float = 1.0) -> int:
        """Add the sampled canaries' gradient, × `scale`, to `grads` (parameter name → the step's gradient
        sum under DP, or its batch mean without); returns how many canaries were sampled."""
        c = self.canaries
        assert c.included is not None
        taken = c.included & (self.rng.random(c.count) < sample_rate)
        for k in np.flatnonzero(taken):
            grads[c.parameters[k]].view(-1)[int(c.indices[k])] += self.norm * scale * float(c.signs[k])
        return int(taken.sum())

    def shuffled_step(
        self, grads: Mapping[str, torch.Tensor], batch: int, batches: int, scale: float = 1.0
    ) -> int:
        """Without DP the loader shuffles: each record is in exactly one batch of every epoch. At an
        epoch's first batch each included canary draws its batch; add those of batch `batch`."""
        c = self.canaries
        assert c.included is not None
        if batch == 0 or self._batch_of is None:
            self._batch_of = self.rng.integers(0, max(batches, 1), size=c.count)
        for k in np.flatnonzero(c.included & (self._batch_of == batch)):
            grads[c.parameters[k]].view(-1)[int(c.indices[k])] += self.norm * scale * float(c.signs[k])
        return int(np.sum(c.included & (self._batch_of == batch)))


active_canaries: ContextVar[CanaryInjection | None] = ContextVar("active_canaries", default=None)
