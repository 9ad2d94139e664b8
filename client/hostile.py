"""Hostile behaviour of a simulated site, for measuring robust aggregation. Never at a real site.

A site acts hostile only when the run config lists its partition id in `hostile-sites` and its node
config has no `data-dir` (simulation). Modes: `sign-flip` sends w_g - s·Δ, `scale` sends w_g + s·Δ,
`random` sends a Gaussian direction with s × the honest update's norm (Δ = w - w_g, s =
`hostile-scale`), `label-flip` trains on flipped labels (y → k - 1 - y) and sends the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from flwr.app import Context
from torch.utils.data import Dataset

from common.config import RunConfig

log = logging.getLogger("fedward.client")


def hostile_mode(context: Context, config: RunConfig, partition: int) -> str | None:
    """The hostile mode this site must act out, or None (not listed, or not a simulation)."""
    if partition not in config.hostile_partitions:
        return None
    if "data-dir" in context.node_config:
        log.warning("hostile-sites is ignored at a site with its own data-dir (not a simulation)")
        return None
    return config.hostile_mode


def announce(site_id: str, server_round: int, mode: str, scale: float) -> None:
    """Say loudly that this simulated site is hostile."""
    what = mode if mode == "label-flip" else f"{mode} x{scale:g}"
    line = f"fedward: SIMULATED HOSTILE SITE {site_id} in round {server_round}: {what}"
    log.warning(line)
    print(line, flush=True)


class LabelFlipped(Dataset):
    """`dataset` with each integer target y replaced by `num_classes` - 1 - y."""

    def __init__(self, dataset: Dataset, num_classes: int) -> None:
        self.dataset = dataset
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, self.num_classes - 1 - y


def corrupt_update(
    global_state: Mapping[str, torch.Tensor],
    local_state: Mapping[str, torch.Tensor],
    mode: str,
    scale: float,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The state a hostile site sends instead of `local_state` (floating-point entries only)."""
    out = dict(local_state)
    floats = [k for k, v in local_state.items() if v.is_floating_point() and k in global_state]
    if mode == "sign-flip":
        factor = -scale
    elif mode == "scale":
        factor = scale
    elif mode == "random":
        generator = torch.Generator().manual_seed(seed)
        deltas = {k: local_state[k] - global_state[k] for k in floats}
        noise = {k: torch.randn(d.shape, generator=generator, dtype=d.dtype) for k, d in deltas.items()}
        honest = torch.sqrt(sum((d.double() ** 2).sum() for d in deltas.values()))
        random = torch.sqrt(sum((n.double() ** 2).sum() for n in noise.values()))
        ratio = float(scale * honest / random) if random > 0 else 0.0
        return {**out, **{k: global_state[k] + ratio * noise[k] for k in floats}}
    else:  # label-flip: the update is already the result of training on flipped labels
        return out
    return {**out, **{k: global_state[k] + factor * (local_state[k] - global_state[k]) for k in floats}}
