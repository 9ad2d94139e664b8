"""The site half of secure aggregation: a ClientApp mod that answers the four stages of
`common/secure_aggregation.py` and never lets the site's update out unmasked.

It acts only on `train` messages that carry the protocol's ConfigRecord; every other message passes
through untouched, except a plain `train` message of a run whose config has `secure-aggregation = true`,
which the site refuses (the coordinator promised the protocol). The protocol's secrets (private keys,
the self-mask seed, the shares this site holds) live in `context.state` for one round only, are kept
out of the train handler's view (so its run state on disk never holds them) and are dropped after the
unmask stage. The weight of the site's update is its own reply's `num-examples`, never a number the
coordinator sends (the coordinator only sends the run's weight unit, which is bound into the masks).

A site refuses (an error reply, no secret sent) when fewer than max(threshold count, its policy's
`secure-aggregation-min-sites`) sites are in the round, at every stage it can see that number.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedward.client.site import site_privacy
from fedward.common.config import RunConfig
from fedward.common.distributed_dp import SITES_KEY
from fedward.common.errors import ConfigError
from fedward.common.secure_aggregation import (
    COLLECT,
    MASKED_KEY,
    MASKED_RECORD,
    MODULUS,
    RECORD,
    SETUP,
    SHARE_KEYS,
    STAGES,
    UNMASK,
    WEIGHT_KEY,
    WEIGHTED_RECORD,
    Key,
    Layout,
    SecAggParameters,
    SecureAggregationError,
    check_public_key,
    decrypt_shares,
    encode_contribution,
    encode_integers,
    encrypt_shares,
    generate_key_pair,
    mask_vector,
    new_secret,
    pairwise_seed,
    pairwise_sign,
    share_secret,
    weight_ratio,
)
from fedward.common.transfer import decode_reply

log = logging.getLogger("fedward.client")

STATE = "secure-aggregation-state"  # in context.state, for the current round only
REFUSED = 4031  # error code of a round the site's secure-aggregation checks refuse (4030: its DP policy)


class Refusal(Exception):
    """The site will not go on with this round (the reason goes to the coordinator)."""


def _site_id(context: Context) -> str:
    node = context.node_config
    return str(node.get("site-id", f"site-{node.get('partition-id', '?')}"))


def _refuse(msg: Message, context: Context, reason: str) -> Message:
    log.warning("site %s refuses secure aggregation: %s", _site_id(context), reason)
    context.state.config_records.pop(STATE, None)  # nothing of this round is used again
    return Message(Error(code=REFUSED, reason=f"site {_site_id(context)} refused: {reason}"), reply_to=msg)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: answer a secure-aggregation stage; pass every other message on."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if RECORD not in msg.content.config_records:
        try:
            config = RunConfig.from_flower(context.run_config)
        except ConfigError:
            return call_next(msg, context)  # the handler refuses it with the reason
        if config.secure_aggregation:
            return _refuse(msg, context, "a plain train message in a run with secure-aggregation = true")
        return call_next(msg, context)
    config = RunConfig.from_flower(context.run_config)
    if not config.secure_aggregation:
        return _refuse(msg, context, "secure-aggregation messages in a run with secure-aggregation = false")
    request = msg.content.config_records[RECORD]
    stage = str(request.get(Key.STAGE, ""))
    state = context.state.config_records.get(STATE)
    previous = str(state.get(Key.STAGE, "")) if state is not None else ""
    if stage not in STAGES or (stage != SETUP and STAGES.index(stage) != STAGES.index(previous) + 1):
        return _refuse(msg, context, f"stage {stage!r} out of order (last stage: {previous or 'none'})")
    params = SecAggParameters.from_config(config)
    try:
        if stage == SETUP:
            return _setup(msg, context, request)
        assert state is not None
        if int(request.get(Key.SERVER_ROUND, -1)) != int(state[Key.SERVER_ROUND]):
            raise Refusal("a stage of another round")
        if stage == SHARE_KEYS:
            return _share_keys(msg, context, request, state, params, config)
        if stage == COLLECT:
            return _collect(msg, context, request, state, call_next, config)
        return _unmask(msg, context, request, state)
    except (Refusal, SecureAggregationError) as refusal:
        return _refuse(msg, context, str(refusal))


def _reply(msg: Message, fields: dict, records: dict | None = None) -> Message:
    content = RecordDict({**(records or {}), RECORD: ConfigRecord(fields)})
    return Message(content, reply_to=msg)


def _setup(msg: Message, context: Context, request: ConfigRecord) -> Message:
    """Fresh X25519 key pairs for this round; reply with the raw public halves."""
    weight_unit = float(request.get(Key.WEIGHT_UNIT, 0.0))
    if not weight_unit > 0:
        return _refuse(msg, context, f"weight unit {weight_unit!r}, expected a number > 0")
    sk1, pk1 = generate_key_pair()
    sk2, pk2 = generate_key_pair()
    state = {
        Key.STAGE: SETUP,
        Key.SERVER_ROUND: int(request.get(Key.SERVER_ROUND, 0)),
        Key.WEIGHT_UNIT: weight_unit,
        "sk1": sk1,
        "pk1": pk1,
        "sk2": sk2,
        "pk2": pk2,
    }
    context.state[STATE] = ConfigRecord(state)
    return _reply(msg, {Key.STAGE: SETUP, Key.PUBLIC_KEY_1: state["pk1"], Key.PUBLIC_KEY_2: state["pk2"]})


def _min_sites(context: Context, config: RunConfig, threshold: int) -> int:
    """The fewest sites this site takes part with: the threshold, or its policy's minimum if higher."""
    policy = site_privacy(context, config).policy
    own = policy.secure_aggregation_min_sites if policy is not None else None
    return max(threshold, own or 0)


def _share_keys(
    msg: Message,
    context: Context,
    request: ConfigRecord,
    state: ConfigRecord,
    params: SecAggParameters,
    config: RunConfig,
) -> Message:
    """Check the participants, Shamir-share the self-mask seed and the mask key, encrypt each share to
    its owner."""
    nodes = [int(n) for n in request.get(Key.NODES, [])]
    pk1s = list(request.get(Key.PUBLIC_KEY_1, []))
    pk2s = list(request.get(Key.PUBLIC_KEY_2, []))
    me = msg.metadata.dst_node_id
    if not (len(nodes) == len(pk1s) == len(pk2s)) or len(set(nodes)) != len(nodes):
        raise Refusal("a malformed list of participants")
    for key in pk1s + pk2s:
        check_public_key(key)
    if len(set(pk1s + pk2s)) != 2 * len(nodes):
        raise Refusal("two participants with the same public key")
    keys = dict(zip(nodes, zip(pk1s, pk2s, strict=True), strict=True))
    if keys.get(me) != (state["pk1"], state["pk2"]):
        raise Refusal("the participant list does not hold this site's own public keys")
    threshold = params.threshold_count(len(nodes))
    needed = _min_sites(context, config, threshold)
    if len(nodes) < needed:
        raise Refusal(f"{len(nodes)} site(s) in the round, fewer than the {needed} this site requires")
    seed = new_secret()
    seed_shares = share_secret(seed, threshold, len(nodes))
    key_shares = share_secret(bytes(state["sk1"]), threshold, len(nodes))
    sk2 = bytes(state["sk2"])
    binding = params.binding(int(state[Key.SERVER_ROUND]), float(state[Key.WEIGHT_UNIT]), keys)
    destinations, ciphertexts = [], []
    own_seed_share = own_key_share = b""
    for index, node in enumerate(nodes):
        if node == me:
            own_seed_share, own_key_share = seed_shares[index], key_shares[index]
            continue
        shares = (seed_shares[index], key_shares[index])
        destinations.append(node)
        ciphertexts.append(encrypt_shares(sk2, keys[node][1], me, node, binding, shares))
    state.update(
        {
            Key.STAGE: SHARE_KEYS,
            "seed": seed,
            "threshold": threshold,
            "needed": needed,
            Key.NODES: nodes,
            "pk1s": pk1s,
            "pk2s": pk2s,
            "binding": binding,
            Key.OWNERS: [me],
            "seed-shares": [own_seed_share],
            "key-shares": [own_key_share],
        }
    )
    return _reply(msg, {Key.STAGE: SHARE_KEYS, Key.DESTINATIONS: destinations, Key.CIPHERTEXTS: ciphertexts})


def _collect(
    msg: Message,
    context: Context,
    request: ConfigRecord,
    state: ConfigRecord,
    call_next: ClientAppCallable,
    config: RunConfig,
) -> Message:
    """Keep the shares addressed to this site, train (the round's real train content), and reply with
    the masked, weighted, quantised update and the reply's plaintext metrics."""
    me = msg.metadata.dst_node_id
    nodes = [int(n) for n in state[Key.NODES]]
    sources = [int(n) for n in request.get(Key.SOURCES, [])]
    ciphertexts = list(request.get(Key.CIPHERTEXTS, []))
    if len(sources) != len(ciphertexts) or len(set(sources)) != len(sources) or me in sources:
        raise Refusal("a malformed list of forwarded shares")
    if not set(sources) <= set(nodes):
        raise Refusal("shares from a site that is not a participant of this round")
    if len(sources) + 1 < int(state["needed"]):
        raise Refusal(
            f"{len(sources) + 1} site(s) left in the round, fewer than the {state['needed']} this site "
            "requires"
        )
    pk2s = dict(zip(nodes, state["pk2s"], strict=True))
    sk2 = bytes(state["sk2"])
    owners, seed_shares, key_shares = (
        list(state[Key.OWNERS]),
        list(state["seed-shares"]),
        list(state["key-shares"]),
    )
    binding = bytes(state["binding"])
    for source, ciphertext in zip(sources, ciphertexts, strict=True):
        try:  # made by `source` for this site, this round and this key list, or refused
            seed_share, key_share = decrypt_shares(
                sk2, bytes(pk2s[source]), source, me, binding, bytes(ciphertext)
            )
        except SecureAggregationError:
            raise Refusal(f"an undecryptable share from node {source}") from None
        owners.append(source)
        seed_shares.append(seed_share)
        key_shares.append(key_share)

    if config.distributed_dp:  # the handler sizes its noise share for the fewest sites in this sum
        msg.content["config"][SITES_KEY] = int(state["needed"])
    secrets = context.state.config_records.pop(STATE)  # the train handler never writes them to disk
    try:
        reply = call_next(msg, context)
    finally:
        context.state[STATE] = secrets
    if reply.has_error():
        context.state.config_records.pop(STATE, None)  # this site is out of the round
        return reply
    masked, layout = _masked_vector(msg, reply, state, sources, config)
    state.update(
        {Key.STAGE: COLLECT, Key.OWNERS: owners, "seed-shares": seed_shares, "key-shares": key_shares}
    )
    state[Key.SOURCES] = sources
    records = {
        "metrics": reply.content["metrics"],
        MASKED_RECORD: ArrayRecord({MASKED_KEY: Array(masked)}),
    }
    return _reply(msg, {Key.STAGE: COLLECT, Key.LAYOUT: layout.to_json()}, records)


def _masked_vector(
    msg: Message, reply: Message, state: ConfigRecord, sources: list[int], config: RunConfig
) -> tuple[np.ndarray, Layout]:
    """The reply's update as the site's masked ring vector (uint32) and its layout."""
    params = SecAggParameters.from_config(config)
    decode_reply(reply.content, config.transfer_dtype)
    records = dict(reply.content.array_records)
    layout = Layout.of(records)
    if config.distributed_dp:  # already integers with their noise share: into the ring as they are
        vector = encode_integers(layout.flatten(records))
    else:
        reference = layout.flatten({WEIGHTED_RECORD: msg.content[WEIGHTED_RECORD]}, missing_as_zero=True)
        update = layout.flatten(records) - reference  # the model as w_local − w_global, others as sent
        q_weight = weight_ratio(
            float(reply.content["metrics"][WEIGHT_KEY]), float(state[Key.WEIGHT_UNIT]), params
        )
        vector = encode_contribution(update, layout.weighted(), q_weight, params)
    binding = bytes(state["binding"])
    vector = vector + mask_vector(bytes(state["seed"]), binding, vector.size)
    me = msg.metadata.dst_node_id
    pk1s = dict(zip((int(n) for n in state[Key.NODES]), state["pk1s"], strict=True))
    for other in sources:
        mask = mask_vector(pairwise_seed(bytes(state["sk1"]), bytes(pk1s[other])), binding, vector.size)
        vector = vector + mask if pairwise_sign(me, other) > 0 else vector + (MODULUS - mask)
    return (vector % MODULUS).astype(np.uint32), layout


def _unmask(msg: Message, context: Context, request: ConfigRecord, state: ConfigRecord) -> Message:
    """Send the shares of the active sites' self-mask seeds and of the dropped sites' mask keys, never
    both for one site; then forget the round."""
    me = msg.metadata.dst_node_id
    active = [int(n) for n in request.get(Key.ACTIVE, [])]
    dropped = [int(n) for n in request.get(Key.DROPPED, [])]
    masked_with = set(int(n) for n in state[Key.SOURCES]) | {me}
    if set(active) & set(dropped) or len(set(active)) != len(active) or len(set(dropped)) != len(dropped):
        raise Refusal("a site listed both as active and as dropped")
    if me not in active or not set(active) | set(dropped) <= masked_with:
        raise Refusal("active or dropped sites that this site's masks do not involve")
    if len(active) < int(state["needed"]):
        raise Refusal(
            f"{len(active)} site(s) in the sum, fewer than the {state['needed']} this site requires"
        )
    held = dict(zip((int(n) for n in state[Key.OWNERS]), range(len(state[Key.OWNERS])), strict=True))
    owners, shares = [], []
    for node in active:
        owners.append(node)
        shares.append(state["seed-shares"][held[node]])
    for node in dropped:
        owners.append(node)
        shares.append(state["key-shares"][held[node]])
    context.state.config_records.pop(STATE, None)
    return _reply(msg, {Key.STAGE: UNMASK, Key.OWNERS: owners, Key.SHARES: shares})
