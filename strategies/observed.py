"""A strategy wrapper that shows each round's per-site replies to an observer.

Built like Flower's DP wrappers: it delegates every step to the wrapped strategy, so any
`flwr.serverapp.strategy` class can be observed without subclassing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

TrainObserver = Callable[[int, list[Message], ArrayRecord | None, MetricRecord | None], None]
EvaluateObserver = Callable[[int, list[Message], MetricRecord | None], None]


class ObservedStrategy(Strategy):
    """Delegates to `inner`; calls `on_train` / `on_evaluate` with the round's replies (and the new
    global arrays). An observer may raise to stop the run after a round.

    `first_round` > 1 continues a resumed run: Flower's `start` counts rounds from 1, this wrapper
    shifts them so sites, strategy and observers see the run's real round numbers. `records` (the task's
    run inputs, e.g. a frozen segmenter) are added to every train and evaluate message; no reply carries
    them back.
    """

    def __init__(
        self,
        inner: Strategy,
        on_train: TrainObserver,
        on_evaluate: EvaluateObserver,
        first_round: int = 1,
        records: Mapping[str, ArrayRecord] | None = None,
    ) -> None:
        self.inner = inner
        self.records = dict(records or {})
        self.on_train = on_train
        self.on_evaluate = on_evaluate
        self.offset = first_round - 1
        self.sent: list[Message] = []  # the current step's instructions, to name who an error reply is for

    def destination_of(self, reply: Message) -> int:
        """The node a reply answers for: the destination of the instruction it replies to (the SuperLink
        sends an unavailable node's error reply from its own node id), else its source."""
        wanted = reply.metadata.reply_to_message_id
        for message in self.sent:
            if wanted and message.metadata.message_id == wanted:
                return message.metadata.dst_node_id
        return reply.metadata.src_node_id

    def _remember(self, messages: Iterable[Message]) -> list[Message]:
        self.sent = list(messages)
        for message in self.sent:
            for name, record in self.records.items():
                message.content[name] = record
        return self.sent

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the wrapped strategy."""
        return self._remember(self.inner.configure_train(server_round + self.offset, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the wrapped strategy, then report the replies."""
        replies = list(replies)
        server_round += self.offset
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        self.on_train(server_round, replies, arrays, metrics)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As the wrapped strategy."""
        return self._remember(self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate with the wrapped strategy, then report the replies."""
        replies = list(replies)
        server_round += self.offset
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        self.on_evaluate(server_round, replies, metrics)
        return metrics

    def summary(self) -> None:
        """As the wrapped strategy."""
        self.inner.summary()
