"""The coordinator half of secure aggregation: a Grid that runs a round's training as the four stages of
`common/secure_aggregation.py` and hands the strategy one reply per surviving site.

Each reply is a real `Message(content, reply_to=<that site's train message>)` whose `metrics` are the
site's own plaintext metrics and whose ArrayRecords all hold the aggregate: global + Σ w_i u_i / Σ w_i
for the model (in its dtypes; integer entries keep the global value), the plain mean for every other
record (SCAFFOLD's Δc). The weighted mean of identical arrays is the aggregate, so FedAvg-family
strategies, update validation and the round recorder work unchanged. The grid only ever holds masked
vectors and, after unmasking, their sum: never one site's update.

A site that sends an error or no reply at a stage is left out (its masks are reconstructed from the
others' shares); when fewer than the threshold of the round's sampled sites are left, the round raises
SecureAggregationError naming the counts, and the run stops.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedward.common.secure_aggregation import (
    COLLECT,
    KEY_BYTES,
    MASKED_KEY,
    MASKED_RECORD,
    MODULUS,
    RECORD,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    WEIGHT_KEY,
    WEIGHTED_RECORD,
    Key,
    Layout,
    SecAggParameters,
    SecureAggregationError,
    check_public_key,
    combine_secret,
    decode_integers,
    decode_sum,
    mask_vector,
    pairwise_seed,
    pairwise_sign,
    to_array_record,
)
from fedward.server.run_grid import RunGrid

log = logging.getLogger("fedward.server")
LEFT_OUT = 4090  # error code of a site the protocol left out (a reply the coordinator could not use)
_STAGE_WORDS = {
    SETUP: "sent their public keys",
    SHARE_KEYS: "shared their keys",
    COLLECT: "sent a masked update",
    UNMASK: "sent their shares",
}


class SecureAggregationGrid(RunGrid):
    """A RunGrid whose train rounds run secure aggregation; every other message passes through.

    `weight_unit` is the run's public weight unit (a count no honest site's num-examples exceeds); it
    only sets the precision of the sites' weights, which are their own."""

    def __init__(
        self, inner: Grid, node_ids: Iterable[int], params: SecAggParameters, weight_unit: float
    ) -> None:
        super().__init__(inner, node_ids)
        self.params = params
        self.weight_unit = float(weight_unit)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Train messages: a secure-aggregation round; anything else: as the wrapped grid."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self.relay(messages, timeout)
        return _Round(self, messages, timeout).run()


def _raw_keys(record: ConfigRecord) -> bool:
    """Whether a setup reply holds two raw X25519 public keys."""
    try:
        for key in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2):
            check_public_key(record.get(key))
    except SecureAggregationError:
        return False
    return True


class _Round:
    """One secure-aggregation round over the strategy's train messages."""

    def __init__(self, grid: SecureAggregationGrid, messages: list[Message], timeout: float | None) -> None:
        self.grid = grid
        self.params = grid.params
        self.timeout = timeout
        self.originals = {m.metadata.dst_node_id: m for m in messages}
        first = messages[0]
        self.config = first.content.config_records.get("config", ConfigRecord())
        self.server_round = int(self.config.get("server-round", 0))
        self.group_id = first.metadata.group_id
        self.threshold = self.params.threshold_count(len(self.originals))
        self.failures: dict[int, Message] = {}

    def _fail(self, node: int, reason: str) -> None:
        self.failures[node] = Message(Error(code=LEFT_OUT, reason=reason), reply_to=self.originals[node])

    def _exchange(self, stage: str, contents: dict[int, RecordDict]) -> dict[int, Message]:
        """Send one stage's messages; the usable replies by node (errors kept for the strategy). Only the
        masked-vector stage carries the round's train content; the others carry the protocol's record."""
        sent = []
        for node, content in contents.items():
            sent.append(
                Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=self.group_id)
            )
        replies = self.grid.relay(sent, self.timeout)
        # the node a reply answers for: the SuperLink answers for an unavailable node from its own id
        destination = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
        usable: dict[int, Message] = {}
        for reply in replies:
            node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node not in contents:
                continue
            if reply.has_error():
                self.failures[node] = Message(reply.error, reply_to=self.originals[node])
                continue
            record = reply.content.config_records.get(RECORD)
            if record is None or record.get(Key.STAGE) != stage:
                self._fail(node, f"node {node}: no {stage} reply of secure aggregation")
                continue
            if stage == SETUP and not _raw_keys(record):
                self._fail(
                    node, f"node {node}: public keys that are not raw X25519 keys of {KEY_BYTES} bytes"
                )
                continue
            usable[node] = reply
        left = len(usable)
        if left < self.threshold:
            raise SecureAggregationError(
                f"secure aggregation, round {self.server_round}: only {left} of the {len(self.originals)} "
                f"sampled sites {_STAGE_WORDS[stage]}, fewer than the {self.threshold} needed "
                f"(secure-aggregation-threshold = {self.params.threshold:g}); the round cannot complete"
            )
        log.info("secure aggregation round %d: %d site(s) %s", self.server_round, left, _STAGE_WORDS[stage])
        return usable

    def _record(self, stage: str, **fields: object) -> RecordDict:
        return RecordDict(
            {RECORD: ConfigRecord({Key.STAGE: stage, Key.SERVER_ROUND: self.server_round, **fields})}
        )

    def run(self) -> list[Message]:
        """The four stages; one reply per surviving site, plus the error replies of the others."""
        params = self.params
        if len(self.originals) > params.max_sites:
            raise SecureAggregationError(
                f"secure aggregation: {len(self.originals)} sites overflow the ring at "
                f"secure-aggregation-bits = {params.bits} (at most {params.max_sites})"
            )
        setup = self._exchange(
            SETUP,
            {n: self._record(SETUP, **{Key.WEIGHT_UNIT: self.grid.weight_unit}) for n in self.originals},
        )
        keys = {
            n: (bytes(r.content[RECORD][Key.PUBLIC_KEY_1]), bytes(r.content[RECORD][Key.PUBLIC_KEY_2]))
            for n, r in sorted(setup.items())
        }
        order = sorted(keys)
        listing = {
            Key.NODES: order,
            Key.PUBLIC_KEY_1: [keys[n][0] for n in order],
            Key.PUBLIC_KEY_2: [keys[n][1] for n in order],
        }
        shared = self._exchange(SHARE_KEYS, {n: self._record(SHARE_KEYS, **listing) for n in order})
        inbox = self._route(shared)
        contents = {}
        for node, (sources, ciphertexts) in inbox.items():
            content = RecordDict(dict(self.originals[node].content.items()))
            content[RECORD] = ConfigRecord(
                {Key.STAGE: COLLECT, Key.SERVER_ROUND: self.server_round, Key.SOURCES: sources,
                 Key.CIPHERTEXTS: ciphertexts}
            )  # fmt: skip
            contents[node] = content
        collected = self._exchange(COLLECT, contents)
        layout, vectors = self._vectors(collected)
        active = sorted(vectors)
        dropped = sorted(set(inbox) - set(active))
        unmask = self._exchange(
            UNMASK, {n: self._record(UNMASK, **{Key.ACTIVE: active, Key.DROPPED: dropped}) for n in active}
        )
        binding = params.binding(self.server_round, self.grid.weight_unit, keys)
        total = self._unmasked_sum(vectors, unmask, keys, binding, dropped, len(order))
        if params.distributed_dp:  # Σ noisy clipped gradient sums: one step of the mean gradient
            count = sum(float(collected[n].content["metrics"][WEIGHT_KEY]) for n in active)
            mean = -params.step_size * params.unit * decode_integers(total) / max(count, 1.0)
        else:
            mean = decode_sum(total, layout.weighted(), len(active), params)
        aggregate = self._aggregate(layout, mean)
        replies = [
            Message(
                RecordDict({**aggregate, "metrics": collected[n].content["metrics"]}),
                reply_to=self.originals[n],
            )
            for n in active
        ]
        return replies + [m for n, m in self.failures.items() if n not in vectors]

    def _route(self, shared: dict[int, Message]) -> dict[int, tuple[list[int], list[bytes]]]:
        """Each site's forwarded ciphertexts: only between two sites that both sent each other one (else
        their pairwise masks would not cancel)."""
        sent: dict[tuple[int, int], bytes] = {}
        for source, reply in shared.items():
            record = reply.content[RECORD]
            for destination, ciphertext in zip(
                record[Key.DESTINATIONS], record[Key.CIPHERTEXTS], strict=True
            ):
                if int(destination) in shared and int(destination) != source:
                    sent[(source, int(destination))] = bytes(ciphertext)
        inbox: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in shared}
        for (source, destination), ciphertext in sorted(sent.items()):
            if (destination, source) in sent:
                inbox[destination][0].append(source)
                inbox[destination][1].append(ciphertext)
        return inbox

    def _vectors(self, collected: dict[int, Message]) -> tuple[Layout, dict[int, np.ndarray]]:
        """The masked vectors of the sites that agree on the most common layout (the others left out)."""
        layouts = {n: str(r.content[RECORD].get(Key.LAYOUT, "")) for n, r in collected.items()}
        common, _ = Counter(layouts.values()).most_common(1)[0]
        layout = Layout.from_json(common)
        vectors: dict[int, np.ndarray] = {}
        for node, reply in collected.items():
            record = reply.content.array_records.get(MASKED_RECORD)
            vector = record[MASKED_KEY].numpy() if record is not None and MASKED_KEY in record else None
            if layouts[node] != common or vector is None or vector.shape != (layout.size + 1,):
                self._fail(node, f"node {node}: a masked update unlike the other sites'")
            elif "metrics" not in reply.content.metric_records:
                self._fail(node, f"node {node}: a masked update without its metrics")
            else:
                vectors[node] = vector.astype(np.uint64)
        if len(vectors) < self.threshold:
            raise SecureAggregationError(
                f"secure aggregation, round {self.server_round}: only {len(vectors)} of the "
                f"{len(self.originals)} sampled sites sent a usable masked update, fewer than the "
                f"{self.threshold} needed (secure-aggregation-threshold = {self.params.threshold:g})"
            )
        return layout, vectors

    def _unmasked_sum(
        self,
        vectors: dict[int, np.ndarray],
        unmask: dict[int, Message],
        keys: dict[int, tuple[bytes, bytes]],
        binding: bytes,
        dropped: list[int],
        participants: int,
    ) -> np.ndarray:
        """Σ masked vectors − the survivors' self masks ∓ the pairwise masks shared with dropped sites."""
        shares: dict[int, list[bytes]] = {n: [] for n in [*vectors, *dropped]}
        for reply in unmask.values():
            record = reply.content[RECORD]
            for owner, share in zip(record[Key.OWNERS], record[Key.SHARES], strict=True):
                if int(owner) in shares:
                    shares[int(owner)].append(bytes(share))
        needed = self.params.threshold_count(participants)
        size = next(iter(vectors.values())).size
        total = sum(vectors.values(), np.zeros(size, dtype=np.uint64)) % MODULUS
        for node, pieces in shares.items():
            if len(pieces) < needed:
                raise SecureAggregationError(
                    f"secure aggregation, round {self.server_round}: {len(pieces)} share(s) of node {node}'s "
                    f"secret came back, fewer than the {needed} that reconstruct it"
                )
            try:  # any `needed` shares rebuild it; Lagrange over more only costs (quadratic in the count)
                secret = combine_secret(pieces[:needed])
            except ValueError:
                raise SecureAggregationError(
                    f"secure aggregation, round {self.server_round}: the shares of node {node} do not combine"
                ) from None
            if node in vectors:  # a survivor: remove its self mask
                total = total + (MODULUS - mask_vector(secret, binding, size))
                continue
            for survivor in vectors:  # a dropped site: remove its pairwise masks from the survivors'
                mask = mask_vector(pairwise_seed(secret, keys[survivor][0]), binding, size)
                total = total + (MODULUS - mask if pairwise_sign(survivor, node) > 0 else mask)
            total %= MODULUS
        return total % MODULUS

    def _aggregate(self, layout: Layout, mean: np.ndarray) -> dict[str, ArrayRecord]:
        """The aggregate's ArrayRecords: the model as global + mean update in its dtypes (integer entries
        keep the global value), the other records as their mean."""
        parts = layout.unflatten(mean)
        first = next(iter(self.originals.values()))
        out: dict[str, ArrayRecord] = {}
        for name, arrays in parts.items():
            if name != WEIGHTED_RECORD:
                out[name] = to_array_record(arrays)
        if WEIGHTED_RECORD in first.content.array_records:
            model = {}
            for key, array in first.content[WEIGHTED_RECORD].items():
                value = array.numpy()
                update = parts.get(WEIGHTED_RECORD, {}).get(key)
                if update is None or not np.issubdtype(value.dtype, np.floating):
                    model[key] = value
                else:
                    model[key] = (value.astype(np.float64) + update.astype(np.float64)).astype(value.dtype)
            out[WEIGHTED_RECORD] = to_array_record(model)
        return dict(sorted(out.items()))
