"""When Flower's in-process engine hands the ServerApp's messages to the sites (local simulations only).

Flower 1.42's simulation engine moves messages from its LinkState to the site workers in a loop that
passes over every node once per 100 ms (`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`):
each exchange of a round waits for the next pass, so a round of two exchanges (train, evaluate) costs at
least 200 ms whatever the work, and a few milliseconds more of site work (DP-SGD) cost a whole pass.
`install()` gives the local runtime the same loop, woken as soon as the ServerApp stores a message and then
serving only the nodes it sent to (a pass over 1,000 nodes costs 1,000 scans of the state), with Flower's
100 ms pass over every node kept. Everything else is Flower's: one message per node per pass (a site's
messages are handled one at a time, in order), the same queue, the same stop event.
"""

from __future__ import annotations

import threading
import time
from queue import Queue
from typing import Any

IDLE_PASS_SECONDS = 0.1  # Flower's pass over every node: still made this often


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict, f_stop: threading.Event) -> None:
    """Flower's loop (same arguments): move each node's next message into `queue`. The nodes the ServerApp
    just sent to are served at once (and again while they have more), every node every `IDLE_PASS_SECONDS`
    as in Flower; one message per node per pass either way."""
    arrived, lock = threading.Event(), threading.Lock()
    sent_to: set[int] = set()
    store = state.store_message_ins

    def store_and_wake(message: Any, *args: Any, **kwargs: Any) -> Any:
        message_id = store(message, *args, **kwargs)
        if message_id is not None:
            with lock:
                sent_to.add(message.metadata.dst_node_id)
            arrived.set()
        return message_id

    state.store_message_ins = store_and_wake
    try:
        full_pass_at = 0.0
        while not f_stop.is_set():
            arrived.clear()  # a store after this sets it again: no wake is lost
            with lock:
                nodes = [n for n in sent_to if n in nodes_mapping]
                sent_to.clear()
            full = time.monotonic() >= full_pass_at
            moved = [n for n in (nodes_mapping if full else nodes) if _move_one(state, queue, n)]
            if full:  # the next one a pass after this one ends, as Flower waits after its pass
                full_pass_at = time.monotonic() + IDLE_PASS_SECONDS
            if moved:  # they may hold more: serve them again at once
                with lock:
                    sent_to.update(moved)
                continue
            arrived.wait(max(0.0, full_pass_at - time.monotonic()))
    finally:
        del state.store_message_ins  # the instance attribute: the class's method again


def _move_one(state: Any, queue: Queue, node_id: int) -> bool:
    """Move the node's next undelivered message into `queue`; whether there was one."""
    messages = state.get_message_ins(node_id=node_id, limit=1)
    for message in messages:
        queue.put(message)
    return bool(messages)


def install() -> bool:
    """Use `add_messages_to_queue` in this process's Flower engine; False (Flower's loop kept) when the
    installed Flower does not have the loop this replaces."""
    from flwr.server.superlink.fleet.vce import vce_api

    current = getattr(vce_api, "add_messages_to_queue", None)
    if current is add_messages_to_queue:
        return True
    if current is None or current.__code__.co_varnames[:4] != ("state", "queue", "nodes_mapping", "f_stop"):
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
