"""Build Flower Messages outside a Flower process, for strategy and ClientApp unit tests.

Flower 1.42 refuses to create a Message unless the private `TaskIdentity` is set (it is, inside a
SuperLink or SuperNode process); the `flower_identity` fixture sets it and restores it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 1


@pytest.fixture()
def flower_identity() -> Iterator[None]:
    """Let Messages be created in this process (private Flower API, hence behind a fixture)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """Just enough of a Grid for `configure_train` / `configure_evaluate`: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        """All nodes are connected."""
        return list(self.node_ids)


def arrays(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy arrays."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def instruction(node_id: int, content: RecordDict | None = None) -> Message:
    """A train message to `node_id` (empty config unless `content` is given)."""
    content = content if content is not None else RecordDict({"config": ConfigRecord({})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def train_reply(
    node_id: int,
    model: Mapping[str, np.ndarray],
    num_examples: int = 10,
    extra: Mapping[str, ArrayRecord] | None = None,
) -> Message:
    """A site's train reply: its model, the metrics fedward sends, and optional extra ArrayRecords."""
    metrics = MetricRecord(
        {"num-examples": num_examples, "site-weight": 1, "train-loss": 0.5, "epsilon": 1.0}
    )
    content = RecordDict({"arrays": arrays(model), "metrics": metrics, **(extra or {})})
    return Message(content, reply_to=instruction(node_id))


def replies_to(messages: list[Message], models: Mapping[int, Mapping[str, np.ndarray]]) -> list[Message]:
    """Replies to a strategy's own messages, one per node, with the given models."""
    return [
        Message(
            RecordDict(
                {
                    "arrays": arrays(models[m.metadata.dst_node_id]),
                    "metrics": MetricRecord({"num-examples": 10, "site-weight": 1}),
                }
            ),
            reply_to=m,
        )
        for m in messages
    ]
