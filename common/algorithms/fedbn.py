"""FedBN (Li et al., 2021): the config flag, which layers stay at a site, and the site hook. The server
half is `strategies/fedbn.py` (FedAvg that sets the flag).

A flagged site keeps its normalisation layers' weights and statistics in `context.state` and puts them
over the global ones before training and evaluating; a model without such layers trains as under FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedward.common.algorithms.base import SiteHook, TrainedRound, pick

LOCAL_NORM_LAYERS = "local-norm-layers"  # config flag, server → site: keep normalisation layers at the site
NORM_STATE = "fedbn-norm-layers"  # context.state key of the site's normalisation layers

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def norm_layer_keys(model: nn.Module) -> list[str]:
    """State-dict keys (weights, biases, running statistics) of the model's normalisation layers."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            keys += [f"{name}.{k}" if name else k for k in module.state_dict()]
    return keys


def with_local_layers(
    global_state: Mapping[str, torch.Tensor], local: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The global state with the site's own normalisation layers in place of the global ones."""
    merged = dict(global_state)
    for key, value in (local or {}).items():
        if key in merged and merged[key].shape == value.shape:
            merged[key] = value
    return merged


def site_model_state(
    global_state: Mapping[str, torch.Tensor], shared: ConfigRecord, state: RecordDict
) -> Mapping[str, torch.Tensor]:
    """The global state, with the site's own normalisation layers over it when the server flags it."""
    if shared.get(LOCAL_NORM_LAYERS) and NORM_STATE in state:
        return with_local_layers(global_state, state[NORM_STATE].to_torch_state_dict())
    return global_state


def keep_norm_layers(model: nn.Module, shared: ConfigRecord, state: RecordDict) -> None:
    """When flagged, store the trained model's normalisation layers for the next rounds (none: no-op)."""
    if shared.get(LOCAL_NORM_LAYERS):
        keys = norm_layer_keys(model)
        if keys:
            state[NORM_STATE] = ArrayRecord(pick(model.state_dict(), keys))


class FedBNSite(SiteHook):
    """The site half: its own normalisation layers over the global model, kept after each round."""

    plain_update = False  # local layers are not the global model's

    def model_state(
        self, global_state: Mapping[str, torch.Tensor], shared: ConfigRecord, state: RecordDict
    ) -> Mapping[str, torch.Tensor]:
        """The global state under the site's normalisation layers."""
        return site_model_state(global_state, shared, state)

    def finish(self, trained: TrainedRound) -> dict[str, ArrayRecord]:
        """Keep the trained normalisation layers; nothing extra in the reply."""
        keep_norm_layers(trained.model, trained.content["config"], trained.state)
        return {}
