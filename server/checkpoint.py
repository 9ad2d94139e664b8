"""Round checkpoints: the global model and all server-side state, saved after every completed round.

`checkpoint.json` + `checkpoint-round-NNNN.safetensors` in the run directory (server/checkpoint_store.py)
hold the last completed round, the global arrays, the state of the whole strategy chain
(FedAdam/FedYogi/FedAdagrad moments, FedAvgM momentum, SCAFFOLD's control variate, the central-DP
accountant and adaptive clipping norm), the recorder's per-site bookkeeping and the state of the server's
*public* random generators (Python's: node order; torch's: initial weights), so a resumed non-private run
continues exactly where the last completed round ended. Arrays go to safetensors, everything else to JSON
(server/checkpoint_codec.py); nothing is pickled. Each checkpoint is signed with the federation's
provenance key and checked before resuming. Privacy randomness is never in it: central-DP noise comes from
OS entropy (strategies/central_dp.py), numpy's global generator is neither seeded from the run seed nor
saved, and generator objects on a strategy are not saved.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedward.server.checkpoint_codec import CheckpointError, decode, encode
from fedward.server.checkpoint_store import CHECKPOINT_JSON, read_checkpoint, write_checkpoint
from fedward.server.provenance.signing import load_private_key, resolve_signing_key

CHECKPOINT = CHECKPOINT_JSON
_FIELDS = ("arrays", "strategy", "recorder", "rng")  # encoded into `state`; round and run uid stay plain
_WRAPPED = ("inner", "strategy")  # how fedward's and Flower's wrappers hold the strategy they wrap
_GENERATORS = (random.Random, np.random.Generator, np.random.RandomState, torch.Generator)


def strategy_chain(strategy: Strategy) -> list[Strategy]:
    """The strategy and every strategy it wraps, outermost first."""
    chain = [strategy]
    while True:
        layer = chain[-1]
        inner = next(
            (getattr(layer, a) for a in _WRAPPED if isinstance(getattr(layer, a, None), Strategy)), None
        )
        if inner is None:
            return chain
        chain.append(inner)


@dataclass(frozen=True)
class _Stateful:
    """An attribute that saves itself (e.g. Flower's privacy accountant): its `state_dict()`."""

    state: Any


def _state_of(obj: Strategy) -> dict[str, Any]:
    """An object's data attributes: not the wrapped strategy, not callables (metric functions, observers);
    objects with `state_dict` / `load_state_dict` (Flower's accountant) as their state dict; never a
    random generator (its state would let a reader replay noise drawn from it)."""
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if (k in _WRAPPED and isinstance(v, Strategy)) or callable(v) or isinstance(v, _GENERATORS):
            continue
        saves_itself = hasattr(v, "state_dict") and hasattr(v, "load_state_dict")
        out[k] = _Stateful(v.state_dict()) if saves_itself else v
    return out


def strategy_state(strategy: Strategy) -> list[dict[str, Any]]:
    """The data attributes of each strategy in the chain (moments, momentum, control variates...)."""
    return [_state_of(s) for s in strategy_chain(strategy)]


def restore_strategy_state(strategy: Strategy, state: list[dict[str, Any]]) -> None:
    """Put saved attributes back into a freshly built strategy chain of the same shape."""
    chain = strategy_chain(strategy)
    kinds = [type(s).__name__ for s in chain]
    if len(chain) != len(state):
        raise ValueError(f"checkpoint has {len(state)} strategy layers, this run builds {kinds}")
    for layer, saved in zip(chain, state, strict=True):
        for key, value in saved.items():
            if isinstance(value, _Stateful):
                getattr(layer, key).load_state_dict(value.state)
            else:
                setattr(layer, key, value)


def seed_everything(seed: int) -> None:
    """Seed the server's public randomness (Python: node order; torch: initial weights) from the run seed.

    NumPy's global generator is reseeded from OS entropy instead: Flower's DP helpers draw from it, so it
    must never follow a seed that config.json records."""
    random.seed(seed)
    np.random.seed()  # OS entropy
    torch.manual_seed(seed)


@dataclass
class RoundCheckpoint:
    """Everything needed to continue a run after `server_round`."""

    server_round: int
    run_uid: str
    arrays: dict[str, np.ndarray]
    strategy: list[dict[str, Any]]
    recorder: dict[str, Any]
    rng: dict[str, Any]

    @staticmethod
    def new_run_uid() -> str:
        """A fresh id for a logical run; it survives resumes (sites key their run state by it)."""
        return uuid.uuid4().hex

    @classmethod
    def capture(
        cls,
        server_round: int,
        run_uid: str,
        arrays: ArrayRecord,
        strategy: Strategy,
        recorder: dict[str, Any],
    ) -> RoundCheckpoint:
        """Snapshot the server after a completed round."""
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}  # public generators only
        return cls(
            server_round,
            run_uid,
            {k: a.numpy().copy() for k, a in arrays.items()},
            strategy_state(strategy),
            recorder,
            rng,
        )

    def save(self, run_dir: Path, key: Path | str | None = None) -> Path:
        """Write the checkpoint signed with `key` (default: the run's signing key,
        server/provenance/signing.py); a crash mid-write leaves the previous checkpoint. CheckpointError
        naming a state that cannot be saved."""
        state, arrays = encode({name: getattr(self, name) for name in _FIELDS})
        state = {"round": self.server_round, "run-uid": self.run_uid, **state}
        private = load_private_key(resolve_signing_key(key))
        return write_checkpoint(Path(run_dir), self.server_round, state, arrays, private)

    @classmethod
    def load(cls, run_dir: Path, key: Path | str | None = None) -> RoundCheckpoint | None:
        """The run's last checkpoint, or None when no round completed yet; CheckpointError when its
        signature (by `key`, default the run's signing key) or content does not check, or when only a
        pickle `checkpoint.pt` of an older fedward is there."""
        public = load_private_key(resolve_signing_key(key)).public_key()
        found = read_checkpoint(Path(run_dir), public)
        if found is None:
            return None
        document, arrays = found
        state = decode(document["state"], arrays, where=f"{Path(run_dir) / CHECKPOINT}: state")
        if not isinstance(state, dict) or set(state) != {"round", "run-uid", *_FIELDS}:
            raise CheckpointError(f"{Path(run_dir) / CHECKPOINT}: state must hold round, run-uid, {_FIELDS}")
        if state["round"] != document["round"] or not isinstance(state["run-uid"], str):
            raise CheckpointError(f"{Path(run_dir) / CHECKPOINT}: round or run-uid malformed")
        return cls(state["round"], state["run-uid"], *(state[name] for name in _FIELDS))

    def restore_rng(self) -> None:
        """Put the server's public generators back (node sampling order); a numpy state that an older
        checkpoint holds is ignored."""
        random.setstate(self.rng["python"])
        torch.set_rng_state(self.rng["torch"])

    def array_record(self) -> ArrayRecord:
        """The global model after the checkpointed round."""
        return ArrayRecord({k: Array(v) for k, v in self.arrays.items()})
