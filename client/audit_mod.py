"""Simulation-only ClientApp mod of `fedward sim audit`: the audited site trains with gradient canaries,
and what the coordinator receives from every site is written down for the adversaries.

The audited site (partition `audit-site`) reads the canaries and their secret coins from `audit-dir`
(written by simulations/audit.py before the run) and trains every federated round with them
(common/audit/canaries.py). For each train reply, the update the coordinator sees (reply arrays as
received, minus the global arrays sent) is kept: the audited site's in full, every other site's at the
canary coordinates (in full too under the seeded-noise switch, whose adversary replays every site's
noise). A deployed site's app has no such mod (client/app.py `app`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedward.common.audit.canaries import CanaryInjection, GradientCanaries, active_canaries
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.transfer import decode_reply

OBSERVED = "observed"  # sub-folder of the audit folder: one file per round and site


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inject the canaries at the audited site; record what each site sends the coordinator."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    try:
        config = RunConfig.from_flower(context.run_config)
    except ConfigError:
        return call_next(msg, context)  # the handler refuses it with the reason
    if not config.audit_dir:
        return call_next(msg, context)
    folder = Path(config.audit_dir)
    partition = int(context.node_config.get("partition-id", 0))
    audited = partition == config.audit_site
    canaries = GradientCanaries.load(folder, with_coins=audited)
    token = active_canaries.set(CanaryInjection(canaries, config.dp_max_grad_norm) if audited else None)
    try:
        reply = call_next(msg, context)
    finally:
        active_canaries.reset(token)
    if not reply.has_error():
        _observe(
            folder / OBSERVED,
            msg,
            reply,
            partition,
            canaries,
            config,
            full=audited or config.dp_seeded_noise,
            audited=audited,
        )
    return reply


def _observe(
    folder: Path,
    msg: Message,
    reply: Message,
    partition: int,
    canaries: GradientCanaries,
    config: RunConfig,
    *,
    full: bool,
    audited: bool,
) -> None:
    """Write the update the coordinator receives from this site in this round (decoded as it does)."""
    received = RecordDict({"arrays": reply.content["arrays"].copy()})
    decode_reply(received, config.transfer_dtype)
    local = {k: v.numpy() for k, v in received["arrays"].items()}
    sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    update = {k: local[k].astype(np.float64) - sent[k].astype(np.float64) for k in canaries.parameters}
    server_round = int(msg.content["config"].get("server-round", 1))
    metrics = reply.content["metrics"]
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "canary-update": canaries.values(update),
        "steps": np.asarray(int(metrics.get("steps", 0))),
        "noise-multiplier": np.asarray(float(metrics.get("noise-multiplier", 0.0))),
    }
    if full:  # the whole update: the knowing-seed adversary fits its noise replay on every weight
        record |= {f"update/{k}": local[k].astype(np.float64) - sent[k].astype(np.float64) for k in local}
    if server_round == 1 and audited:
        record |= {f"initial/{k}": v for k, v in sent.items()}
    np.savez(folder / f"round-{server_round:04d}-site-{partition}.npz", **record)
