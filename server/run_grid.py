"""A Grid that lists only the run's sites, so that the strategy's rounds never sample a node left out at
the statistics step (a refusing site would otherwise be asked, and refuse, every round)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


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
        """As the wrapped grid."""
        return self.inner.send_and_receive(messages, timeout=timeout)
