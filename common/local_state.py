"""What SCAFFOLD and FedBN keep per site, and the record keys it travels under.

Shared by the ClientApp (which keeps a site's part in `context.state`) and the strategies (which send
the global part), so both sides agree on names without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

SCAFFOLD_CONTROL = "scaffold-control"  # ArrayRecord, server → site: global control variate c
SCAFFOLD_CONTROL_DELTA = "scaffold-control-delta"  # ArrayRecord, site → server: Δc_i
SCAFFOLD_STATE = "scaffold-site-control"  # context.state key of the site's own control variate c_i
LOCAL_NORM_LAYERS = "local-norm-layers"  # config flag (FedBN): keep normalisation layers at the site
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


def pick(state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of `state` under `keys` (detached copies)."""
    return {k: state[k].detach().clone() for k in keys if k in state}


def control_correction(
    global_control: Mapping[str, torch.Tensor],
    site_control: Mapping[str, torch.Tensor],
    names: Iterable[str],
) -> dict[str, torch.Tensor]:
    """SCAFFOLD's gradient correction c - c_i for each parameter name (a missing variate is zero)."""
    out = {}
    for name in names:
        ref = global_control.get(name, site_control.get(name))
        if ref is not None:
            zero = torch.zeros_like(ref)
            out[name] = global_control.get(name, zero) - site_control.get(name, zero)
    return out


def updated_control(
    site_control: Mapping[str, torch.Tensor],
    global_control: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    steps: int,
    lr: float,
) -> dict[str, torch.Tensor]:
    """SCAFFOLD option II: c_i⁺ = c_i - c + (x - y) / (K η_l), for each parameter in `end`."""
    out = {}
    for name, y in end.items():
        zero = torch.zeros_like(y)
        drift = (start[name] - y) / (max(steps, 1) * lr)
        out[name] = site_control.get(name, zero) - global_control.get(name, zero) + drift
    return out
