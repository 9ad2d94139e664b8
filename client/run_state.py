"""The site's per-run state on disk, so a resumed run continues exactly.

Flower gives every run a fresh `context.state`; a run the coordinator resumes is a new Flower run. The
site therefore writes its state (privacy history of this run, SCAFFOLD control variate, FedBN layers)
after each round it trains to `<state-dir>/runs/<run-uid>/round-<r>.pt` and, when a resumed run reaches
it with an empty state, reads it back: the model-side records as they were after the last round before
the current one, and the privacy history as it is now — including the steps of a round that was trained
but lost in the crash, since those steps were really taken — with the σ calibrated for the run.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedward.client.budget import CALIBRATION_STATE

_ROUND = re.compile(r"round-(\d+)\.pt")
_SAFE_UID = re.compile(r"[0-9A-Za-z_-]{1,64}")
KEEP = 2  # snapshots kept: the last round and the one before it
CHECKED = "run-state-checked"  # marks a `context.state` whose disk snapshot was looked for


class SiteRunState:
    """Snapshots of one run's `context.state` at a site (a no-op without a state dir or run id)."""

    def __init__(self, state_dir: Path | None, run_uid: str | None, privacy_key: str) -> None:
        self.folder = None
        if state_dir is not None and run_uid and _SAFE_UID.fullmatch(run_uid):
            self.folder = state_dir / "runs" / run_uid
        self.privacy_key = privacy_key

    def _rounds(self) -> list[int]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _ROUND.fullmatch(p.name)))

    def _read(self, server_round: int) -> dict:
        assert self.folder is not None
        return torch.load(self.folder / f"round-{server_round}.pt", weights_only=True)

    def restore(self, state: RecordDict, server_round: int) -> bool:
        """Fill `state` from disk before the first round this process trains; True when something was read."""
        if CHECKED in state.config_records:
            return False
        state[CHECKED] = ConfigRecord({"checked": 1})  # once per run and process, whatever else is in state
        if not (rounds := self._rounds()):
            return False
        before = [r for r in rounds if r < server_round]
        if before:
            for key, tensors in self._read(before[-1])["arrays"].items():
                state[key] = ArrayRecord(tensors)
        latest = self._read(rounds[-1])["configs"]
        for key in (self.privacy_key, CALIBRATION_STATE):  # CALIBRATION_STATE: keyed by its inputs
            if latest.get(key) is not None:
                state[key] = ConfigRecord(latest[key])
        return True

    def save(self, state: RecordDict, server_round: int) -> None:
        """Write the state after training `server_round` (atomically) and drop older snapshots."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "arrays": {k: v.to_torch_state_dict() for k, v in state.array_records.items()},
            "configs": {k: dict(v) for k, v in state.config_records.items()},
        }
        target = self.folder / f"round-{server_round}.pt"
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(target)
        for old in self._rounds()[:-KEEP]:
            (self.folder / f"round-{old}.pt").unlink(missing_ok=True)
