"""Simulated site faults, to measure how a federation copes with them: a ClientApp mod (`fault_mod`)
that only simulations attach (`simulations/local_runtime.py`); a deployed site's app has no such code path.

A site acts them out in federated train rounds, and only when its node config has no `data-dir`
(simulation), like `client/hostile.py`:

- `sim-dropout = p`: in each round the site does not train with probability p. The draw is
  deterministic in (run seed, round, partition id), so a scenario replays exactly; the site replies
  with an error (code `DROPPED`), which the server records like a refusal and the round goes on with
  the other sites (as long as `min-sites` of them train). Evaluation is not affected: every site still
  measures each global model.
- `sim-stragglers = "1,3"` with `sim-straggler-seconds = s`: those partitions wait s seconds before
  training in every round, so the round takes longer (the server waits for every reply); the delay
  counts towards the reply's `site-seconds`, as a slow site's compute would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.secure_aggregation import RECORD as SECURE_AGGREGATION

log = logging.getLogger("fedward.client")

DROPPED = 4080  # error code of a simulated dropout


@dataclass(frozen=True)
class Fault:
    """What a simulated site does this round instead of (or before) training normally."""

    dropped: bool = False
    delay_seconds: float = 0.0
    probability: float = 0.0

    @property
    def reason(self) -> str:
        """The error reason of a dropout."""
        return f"simulated dropout (sim-dropout = {self.probability:g})"

    def wait(self) -> None:
        """Sleep for a straggler's delay (no-op otherwise)."""
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)


def drops_out(seed: int, server_round: int, partition: int, probability: float) -> bool:
    """Whether partition `partition` skips round `server_round`: probability p, fixed by the seed."""
    if probability <= 0:
        return False
    rng = np.random.default_rng([seed % 2**32, server_round, partition, 4080])
    return bool(rng.random() < probability)


def straggler_partitions(value: str) -> frozenset[int]:
    """Partition ids in a comma list such as "1,3"."""
    return frozenset(int(p) for p in value.split(",") if p.strip())


def simulated_fault(context: Context, config: RunConfig, partition: int, server_round: int) -> Fault:
    """The fault this site must act out in this round (a no-op Fault when none, or at a real site)."""
    dropout = float(config.sim_dropout)
    delay = (
        float(config.sim_straggler_seconds)
        if partition in straggler_partitions(config.sim_stragglers)
        else 0.0
    )
    if dropout <= 0 and delay <= 0:
        return Fault()
    if "data-dir" in context.node_config:
        log.warning("sim-dropout and sim-stragglers are ignored at a site with its own data-dir")
        return Fault()
    dropped = drops_out(config.seed, server_round, partition, dropout)
    if dropped:
        log.warning("simulated site %d drops out of round %d", partition, server_round)
    return Fault(dropped=dropped, delay_seconds=0.0 if dropped else delay, probability=dropout)


@dataclass(frozen=True)
class SimulatedRound:
    """A federated train message as a simulation mod sees it."""

    config: RunConfig
    partition: int
    site_id: str
    server_round: int


def simulated_round(msg: Message, context: Context) -> SimulatedRound | None:
    """The train round `msg` asks for; None for other messages and for a run config the handler will
    refuse (through the safe-error mod)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    try:
        config = RunConfig.from_flower(context.run_config)
    except ConfigError:
        return None
    partition = int(context.node_config.get("partition-id", 0))
    site_id = str(context.node_config.get("site-id", f"site-{partition}"))
    records = msg.content.config_records  # a secure-aggregation stage other than training has no config
    shared = records.get("config") or records.get(SECURE_AGGREGATION) or {}
    return SimulatedRound(config, partition, site_id, int(shared.get("server-round", 1)))


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: a simulated site drops out of a train round (an error reply, nothing reserved or
    spent) or straggles before training; every other message passes through unchanged."""
    if (sim := simulated_round(msg, context)) is None:
        return call_next(msg, context)
    fault = simulated_fault(context, sim.config, sim.partition, sim.server_round)
    if fault.dropped:
        return Message(Error(code=DROPPED, reason=f"site {sim.site_id}: {fault.reason}"), reply_to=msg)
    fault.wait()
    reply = call_next(msg, context)
    if fault.delay_seconds > 0 and not reply.has_error() and "metrics" in reply.content:
        metrics = reply.content["metrics"]
        metrics["site-seconds"] = float(metrics.get("site-seconds", 0.0)) + fault.delay_seconds
    return reply
