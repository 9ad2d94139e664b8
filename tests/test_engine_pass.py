"""The local runtime's message pass (simulations/engine_pass.py): a message reaches the sites' queue as
soon as the ServerApp stores it, one per node per pass, and Flower's engine uses it once installed."""

from __future__ import annotations

import threading
from queue import Empty, Queue
from types import SimpleNamespace

import pytest

from fedward.simulations import engine_pass


class Sent:
    """A message as the pass sees it: its destination in `metadata.dst_node_id`."""

    def __init__(self, node_id: int, text: str) -> None:
        self.metadata, self.text = SimpleNamespace(dst_node_id=node_id), text


class LinkStateStandIn:
    """The two LinkState calls the pass makes, over per-node lists (Flower's InMemoryLinkState keeps
    undelivered messages per node the same way), counting the scans."""

    def __init__(self) -> None:
        self.waiting: dict[int, list[Sent]] = {1: [], 2: [], 3: []}
        self.lock = threading.Lock()
        self.scans: list[int] = []

    def store_message_ins(self, message: Sent) -> str:
        with self.lock:
            self.waiting[message.metadata.dst_node_id].append(message)
        return message.text

    def get_message_ins(self, node_id: int, limit: int) -> list[Sent]:
        self.scans.append(node_id)
        with self.lock:
            taken, self.waiting[node_id] = self.waiting[node_id][:limit], self.waiting[node_id][limit:]
        return taken


def test_a_stored_message_is_moved_at_once_not_on_the_idle_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_pass, "IDLE_PASS_SECONDS", 60.0)  # Flower's timer alone would take a minute
    state, queue, stop = LinkStateStandIn(), Queue(), threading.Event()
    nodes = {1: 0, 2: 1, 3: 2}
    loop = threading.Thread(target=engine_pass.add_messages_to_queue, args=(state, queue, nodes, stop))
    loop.start()
    try:
        for node, text in ((1, "train-1"), (2, "evaluate-2"), (1, "train-1b")):
            state.store_message_ins(Sent(node, text))
            assert queue.get(timeout=10).text == text  # woken by the store, long before the idle pass
        state.scans.clear()
        state.store_message_ins(Sent(3, "a"))
        state.store_message_ins(Sent(3, "b"))  # two for one node: both moved, in order
        assert [queue.get(timeout=10).text, queue.get(timeout=10).text] == ["a", "b"]
        with pytest.raises(Empty):
            queue.get(timeout=0.2)
        assert set(state.scans) == {3}  # only the node sent to was scanned, not every node
    finally:
        stop.set()
        state.store_message_ins(Sent(2, "wake"))  # ends the idle wait so the loop sees the stop
        loop.join(timeout=10)
    assert not loop.is_alive()
    assert "store_message_ins" not in vars(state)  # the state's own method again


def test_install_replaces_flowers_loop_it_recognises() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    flowers = vce_api.add_messages_to_queue
    try:
        assert engine_pass.install() is True
        assert vce_api.add_messages_to_queue is engine_pass.add_messages_to_queue
        assert engine_pass.install() is True  # idempotent
    finally:
        vce_api.add_messages_to_queue = flowers
