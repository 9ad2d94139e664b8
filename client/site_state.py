"""The site's side of SCAFFOLD and FedBN: what it keeps in `context.state` between rounds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from common.local_state import (
    LOCAL_NORM_LAYERS,
    NORM_STATE,
    SCAFFOLD_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_STATE,
    control_correction,
    norm_layer_keys,
    pick,
    updated_control,
    with_local_layers,
)


def site_model_state(
    global_state: Mapping[str, torch.Tensor], shared: ConfigRecord, state: RecordDict
) -> Mapping[str, torch.Tensor]:
    """The global state, with the site's own normalisation layers over it when FedBN asks for it."""
    if shared.get(LOCAL_NORM_LAYERS) and NORM_STATE in state:
        return with_local_layers(global_state, state[NORM_STATE].to_torch_state_dict())
    return global_state


def keep_norm_layers(model: nn.Module, shared: ConfigRecord, state: RecordDict) -> None:
    """Under FedBN, store the trained model's normalisation layers for the next rounds (none: no-op)."""
    if shared.get(LOCAL_NORM_LAYERS):
        keys = norm_layer_keys(model)
        if keys:
            state[NORM_STATE] = ArrayRecord(pick(model.state_dict(), keys))


class ScaffoldRound:
    """One round of SCAFFOLD at a site: the correction c - c_i, then c_i⁺ and Δc_i."""

    def __init__(self, content: RecordDict, state: RecordDict) -> None:
        self.state = state
        self.global_control = content[SCAFFOLD_CONTROL].to_torch_state_dict()
        self.site_control = state[SCAFFOLD_STATE].to_torch_state_dict() if SCAFFOLD_STATE in state else {}

    @classmethod
    def of(cls, content: RecordDict, state: RecordDict) -> ScaffoldRound | None:
        """The round's SCAFFOLD step, or None when the server sent no control variate."""
        return cls(content, state) if SCAFFOLD_CONTROL in content else None

    def correction(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """c - c_i for each parameter name."""
        return control_correction(self.global_control, self.site_control, names)

    def finish(
        self, start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], steps: int, lr: float
    ) -> tuple[str, ArrayRecord]:
        """Store c_i⁺ in the site state; the (key, record) of Δc_i for the reply."""
        new = updated_control(self.site_control, self.global_control, start, end, steps, lr)
        self.state[SCAFFOLD_STATE] = ArrayRecord(new)
        delta = {k: v - self.site_control.get(k, torch.zeros_like(v)) for k, v in new.items()}
        return SCAFFOLD_CONTROL_DELTA, ArrayRecord(delta)
