"""The run's grid (server/run_grid.py): only the run's sites, and a deployed round's replies collected as
they arrive rather than on Flower's HttpGrid 3-second poll."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Message, RecordDict
from flwr.superlink.grid.http_grid import HttpGrid

from fedward.server.run_grid import RunGrid

pytestmark = pytest.mark.usefixtures("flower_identity")  # messages need a run and node identity


class _SuperLink(HttpGrid):
    """An HttpGrid whose Runtime API is this dictionary: each pushed message is answered after `after` s.
    Its own `send_and_receive` (Flower's, which sleeps 3 s between pulls) must not be used."""

    def __init__(self, after: dict[int, float]) -> None:  # no connection: push and pull are local
        self.after = after
        self.pending: dict[str, tuple[float, Message]] = {}
        self.pulls = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.after)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{i}"
            reply = Message(RecordDict(), reply_to=message)
            self.pending[f"m{i}"] = (time.monotonic() + self.after[message.metadata.dst_node_id], reply)
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        now = time.monotonic()
        ready = [i for i in message_ids if i in self.pending and self.pending[i][0] <= now]
        return [self.pending.pop(i)[1] for i in ready]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        raise AssertionError("the 3-second poll of Flower's HttpGrid was used")


def _messages(nodes: Iterable[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train", group_id="1") for n in nodes]


def test_a_deployed_rounds_replies_are_collected_as_they_arrive() -> None:
    link = _SuperLink({1: 0.0, 2: 0.3, 3: 0.6})
    started = time.monotonic()
    replies = RunGrid(link, [1, 2, 3]).send_and_receive(_messages([1, 2, 3]))
    waited = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert link.pulls >= 3  # pulled again after each reply, not once per 3 s
    assert waited < 2.5, waited  # Flower's poll alone would have waited 3 s after the first pull


def test_a_deployed_exchange_stops_at_its_timeout_with_the_replies_it_has() -> None:
    link = _SuperLink({1: 0.0, 2: 60.0})
    replies = RunGrid(link, [1, 2]).send_and_receive(_messages([1, 2]), timeout=0.5)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
