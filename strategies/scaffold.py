"""SCAFFOLD (Karimireddy et al., 2020, option II): control variates correct client drift.

The server keeps the global control variate c and sends it with each train message as a second
ArrayRecord. Each site keeps its own c_i in `context.state`, trains with the correction c - c_i and
replies with its model and Δc_i. Flower's reply contract allows one ArrayRecord, so this strategy
checks and aggregates replies itself:

    x ← x + η_g · (weighted mean of y_i - x)        c ← c + |S| / N · mean(Δc_i)

The record keys, the control-variate maths and the site half live in `common/algorithms/scaffold.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_arrayrecords,
    validate_message_reply_consistency,
)
from flwr.supercore import log

from fedward.common.algorithms.scaffold import SCAFFOLD_CONTROL, SCAFFOLD_CONTROL_DELTA, stepped_control


class Scaffold(FedAvg):
    """SCAFFOLD over all `num_sites` sites; `server_lr` is the global step size η_g."""

    def __init__(self, *, num_sites: int, server_lr: float = 1.0, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.num_sites = num_sites
        self.server_lr = server_lr
        self.control: dict[str, np.ndarray] | None = None
        self.current: dict[str, np.ndarray] | None = None

    def summary(self) -> None:
        """Log the settings."""
        log(INFO, "\t├──> SCAFFOLD settings: server lr %s, %d sites", self.server_lr, self.num_sites)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's messages, each also carrying the global control variate."""
        self.current = {k: a.numpy() for k, a in arrays.items()}
        if self.control is None:
            self.control = {
                k: np.zeros_like(v) for k, v in self.current.items() if np.issubdtype(v.dtype, np.floating)
            }
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[SCAFFOLD_CONTROL] = control
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Step the model towards the weighted mean of the sites' models; update c."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if not valid or self.current is None or self.control is None:
            return None, None
        models = [
            RecordDict({self.arrayrecord_key: m.content[self.arrayrecord_key], **m.content.metric_records})
            for m in valid
        ]
        validate_message_reply_consistency(models, self.weighted_by_key, check_arrayrecord=True)
        mean = aggregate_arrayrecords(models, self.weighted_by_key)
        new = {}
        for key, x in self.current.items():
            y = mean[key].numpy()
            new[key] = (x + self.server_lr * (y - x) if key in self.control else y).astype(x.dtype)
        self._update_control(valid)
        metrics = self.train_metrics_aggr_fn(models, self.weighted_by_key)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()}), metrics

    def _update_control(self, valid: list[Message]) -> None:
        assert self.control is not None
        deltas = []
        for message in valid:
            if SCAFFOLD_CONTROL_DELTA in message.content:
                deltas.append({k: a.numpy() for k, a in message.content[SCAFFOLD_CONTROL_DELTA].items()})
            else:
                log(WARNING, "SCAFFOLD: node %d sent no control variate", message.metadata.src_node_id)
        self.control = stepped_control(self.control, deltas, len(valid), self.num_sites)
