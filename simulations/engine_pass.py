"""When Flower's in-process engine hands the ServerApp's messages to the sites (local simulations only).

Flower 1.42's simulation engine moves messages from its LinkState to the site workers in a loop that
passes over every node once per 100 ms (`flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue`):
each exchange of a round waits for the next pass, so a round of two exchanges (train, evaluate) costs at
least 200 ms whatever the work, and a few milliseconds more of site work (DP-SGD) cost a whole pass.
`install()` gives the local runtime the same loop woken as soon as the ServerApp stores a message, with
Flower's 100 ms pass kept as the idle wait. Everything else is Flower's: one message per node per pass
(a site's messages are handled one at a time, in order), the same queue, the same stop event.
"""

from __future__ import annotations

import threading
from queue import Queue
from typing import Any

IDLE_PASS_SECONDS = 0.1  # Flower's pass: the wait when no message arrives


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict, f_stop: threading.Event) -> None:
    """Flower's loop (same arguments): move each node's next message into `queue`, pass again at once
    after a pass that moved any or when the ServerApp stores one, else after `IDLE_PASS_SECONDS`."""
    arrived = threading.Event()
    store = state.store_message_ins

    def store_and_wake(*args: Any, **kwargs: Any) -> Any:
        message_id = store(*args, **kwargs)
        arrived.set()
        return message_id

    state.store_message_ins = store_and_wake
    try:
        while not f_stop.is_set():
            arrived.clear()  # a message stored during the pass below sets it again: no wake is lost
            moved = False
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
                    moved = True
            if not moved:
                arrived.wait(IDLE_PASS_SECONDS)
    finally:
        del state.store_message_ins  # the instance attribute: the class's method again


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
