"""Hostile behaviour of a simulated site, for measuring robust aggregation: a ClientApp mod
(`hostile_mod`) that only simulations attach (`simulations/local_runtime.py`); a deployed site's app has
no such code path.

A site acts hostile only when the run config lists its partition id in `hostile-sites` and its node
config has no `data-dir` (simulation), in federated train rounds (not local-only training). Modes:
`sign-flip` sends w_g - s·Δ, `scale` sends w_g + s·Δ, `random` sends a Gaussian direction with s × the
honest update's norm (Δ = w - w_g, s = `hostile-scale`), `label-flip` trains on flipped labels
(y → k - 1 - y) and sends the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from torch import nn
from torch.utils.data import Dataset

from fedward.client.app import train_set_view
from fedward.client.simulated_faults import simulated_round
from fedward.common.config import RunConfig
from fedward.common.transfer import decode, encode

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


@torch.no_grad()
def _num_outputs(model: nn.Module, dataset: Dataset) -> int:
    """Number of classes the model predicts (size of its output's class dimension)."""
    model.eval()
    x, _ = dataset[0]
    return int(model(x.unsqueeze(0)).shape[1])


def _flip_labels(dataset: Dataset, model: nn.Module) -> Dataset:
    return LabelFlipped(dataset, _num_outputs(model, dataset))


def hostile_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: a site listed in `hostile-sites` trains on flipped labels (`label-flip`) or sends
    a corrupted update instead of its trained one; every other message passes through unchanged."""
    if (sim := simulated_round(msg, context)) is None:
        return call_next(msg, context)
    config = sim.config
    mode = hostile_mode(context, config, sim.partition)
    if mode is None:
        return call_next(msg, context)
    token = train_set_view.set(_flip_labels if mode == "label-flip" else None)
    try:
        reply = call_next(msg, context)
    finally:
        train_set_view.reset(token)
    if reply.has_error():
        return reply
    announce(sim.site_id, sim.server_round, mode, config.hostile_scale)
    if mode != "label-flip":  # label-flip: the reply already is the result of training on flipped labels
        sent = decode(reply.content["arrays"], config.transfer_dtype).to_torch_state_dict()
        seed = config.local_training(sim.server_round, sim.partition).seed
        global_state = msg.content["arrays"].to_torch_state_dict()
        corrupted = corrupt_update(global_state, sent, mode, config.hostile_scale, seed)
        reply.content["arrays"] = encode(ArrayRecord(corrupted), config.transfer_dtype)
    return reply
