"""A Grid that lists only the run's sites, so that the strategy's rounds never sample a node left out at
the statistics step (a refusing site would otherwise be asked, and refuse, every round), and that collects
a deployed round's replies as they arrive."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_PULL_SECONDS = 0.05
LONGEST_PULL_SECONDS = 1.0
"""A deployed grid's reply pulls: the first after 50 ms, then backing off (×1.5) to 1 s while none come."""


class RunGrid(Grid):
    """Delegates to `inner`; `get_node_ids` lists the connected nodes among `node_ids` only."""

    def __init__(self, inner: Grid, node_ids: Iterable[int]) -> None:
        self.inner = inner
        self.node_ids = frozenset(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        """The run's sites, connected or not: a site that went offline mid-run is still sampled and the
        SuperLink answers its messages with an error reply (the round records it as a failure, and the
        run stops below min-sites), where the strategy would otherwise wait forever for every site."""
        connected = [nid for nid in self.inner.get_node_ids() if nid in self.node_ids]
        return connected + sorted(self.node_ids - set(connected))

    def set_run(self, run: Run) -> None:
        """As the wrapped grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """As the wrapped grid."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """As the wrapped grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """As the wrapped grid."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """As the wrapped grid."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """As the wrapped grid (see `relay`)."""
        return self.relay(messages, timeout)

    def relay(self, messages: Iterable[Message], timeout: float | None) -> list[Message]:
        """Send `messages` and collect their replies (until all came, or `timeout`). A deployed grid
        (Flower's HttpGrid) pulls replies every 3 s, a floor under every message exchange of a round;
        here its replies are pulled after 50 ms, backing off to 1 s while none arrive. Other grids (the
        simulation's, which polls every few ms) collect as they do."""
        deployed = sys.modules.get("flwr.superlink.grid.http_grid")  # not imported: not a deployed grid
        if deployed is None or not isinstance(self.inner, deployed.HttpGrid):
            return list(self.inner.send_and_receive(messages, timeout=timeout))
        waiting = set(self.inner.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = FIRST_PULL_SECONDS
        while waiting:
            pulled = list(self.inner.pull_messages(waiting))
            replies += pulled
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            pause = FIRST_PULL_SECONDS if pulled else min(pause * 1.5, LONGEST_PULL_SECONDS)
            time.sleep(pause)
        return replies
