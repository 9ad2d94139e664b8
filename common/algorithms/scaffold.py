"""SCAFFOLD (Karimireddy et al., 2020, option II): the record keys, the control-variate maths of both
sides, and the site hook. The server half is `strategies/scaffold.py`.

The server sends the global control variate c with each train message; a site keeps its own c_i in
`context.state`, trains with the correction c - c_i and replies with Δc_i beside its model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

from fedward.common.algorithms.base import SiteHook, TrainedRound, pick

SCAFFOLD_CONTROL = "scaffold-control"  # ArrayRecord, server → site: global control variate c
SCAFFOLD_CONTROL_DELTA = "scaffold-control-delta"  # ArrayRecord, site → server: Δc_i
SCAFFOLD_STATE = "scaffold-site-control"  # context.state key of the site's own control variate c_i


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


def stepped_control(
    control: Mapping[str, np.ndarray],
    deltas: Sequence[Mapping[str, np.ndarray]],
    num_trained: int,
    num_sites: int,
) -> dict[str, np.ndarray]:
    """Server: c ← c + |S| / N · mean(Δc_i) over the |S| = `num_trained` sites that trained (a missing
    Δc_i counts as zero); N counts every site, sampled this round or not."""
    share = num_trained / num_sites
    out = dict(control)
    for key, c in control.items():
        parts = [d[key] for d in deltas if key in d]
        if parts:
            step = np.sum(parts, axis=0) / num_trained
            out[key] = (c + share * step).astype(c.dtype)
    return out


class ScaffoldSite(SiteHook):
    """The site half: the correction c - c_i while training, then c_i⁺ kept and Δc_i sent."""

    plain_update = False  # a correction term moves the update

    @staticmethod
    def _controls(
        content: RecordDict, state: RecordDict
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(c, c_i), or None when the server sent no control variate."""
        if SCAFFOLD_CONTROL not in content:
            return None
        site = state[SCAFFOLD_STATE].to_torch_state_dict() if SCAFFOLD_STATE in state else {}
        return content[SCAFFOLD_CONTROL].to_torch_state_dict(), site

    def correction(
        self, content: RecordDict, state: RecordDict, start: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """c - c_i for each parameter."""
        controls = self._controls(content, state)
        return None if controls is None else control_correction(*controls, start)

    def finish(self, trained: TrainedRound) -> dict[str, ArrayRecord]:
        """Keep c_i⁺ in the site state; reply with Δc_i = c_i⁺ - c_i."""
        controls = self._controls(trained.content, trained.state)
        if controls is None:
            return {}
        global_control, site_control = controls
        end = pick(trained.model.state_dict(), trained.start)
        new = updated_control(site_control, global_control, trained.start, end, trained.steps, trained.lr)
        trained.state[SCAFFOLD_STATE] = ArrayRecord(new)
        delta = {k: v - site_control.get(k, torch.zeros_like(v)) for k, v in new.items()}
        return {SCAFFOLD_CONTROL_DELTA: ArrayRecord(delta)}
