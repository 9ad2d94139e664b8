"""The site-hook protocol: the site half of an aggregation strategy.

The ClientApp calls the run's hook at three points of a train message (and the first one when it
evaluates): the model state to start from, a gradient correction for the training loop, and, after
training, what the site keeps in `context.state` and which extra records its reply carries. The base class
is a plain strategy's hook: the global model as sent, no correction, nothing kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn


def pick(state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of `state` under `keys` (detached copies)."""
    return {k: state[k].detach().clone() for k in keys if k in state}


@dataclass(frozen=True)
class TrainedRound:
    """What a hook sees after local training."""

    content: RecordDict  # the train message's records (global arrays, config, the strategy's own)
    state: RecordDict  # the site's `context.state`, kept between rounds
    model: nn.Module  # the trained model, on the CPU
    start: Mapping[str, torch.Tensor]  # its parameters before training
    steps: int  # optimiser steps taken
    lr: float  # the local learning rate


class SiteHook:
    """The site half of a strategy. Subclasses override what their algorithm needs."""

    plain_update: bool = True  # plain DP-SGD from the global model: the server's norm bound holds

    def model_state(
        self, global_state: Mapping[str, torch.Tensor], shared: ConfigRecord, state: RecordDict
    ) -> Mapping[str, torch.Tensor]:
        """The state to load before training or evaluating (`shared`: the message's config)."""
        return global_state

    def correction(
        self, content: RecordDict, state: RecordDict, start: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """A per-parameter term the training loop adds after each step (`start`: the parameters before
        training), or None."""
        return None

    def finish(self, trained: TrainedRound) -> dict[str, ArrayRecord]:
        """Update what the site keeps in `trained.state`; the extra records of the reply (name → record)."""
        return {}
