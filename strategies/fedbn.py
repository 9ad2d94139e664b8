"""FedBN (Li et al., 2021): normalisation layers stay at each site; everything else is averaged.

The server side is FedAvg plus a flag in every train and evaluate config; each site then keeps its
own normalisation-layer weights and statistics in `context.state` and puts them over the global ones
before training and evaluating. A model without normalisation layers (the CKD models) trains exactly
as under FedAvg. The saved global model holds the sites' averaged normalisation layers. The flag, the
layer selection and the site half live in `common/algorithms/fedbn.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedward.common.algorithms.fedbn import LOCAL_NORM_LAYERS


class FedBN(FedAvg):
    """FedAvg that tells sites to keep their normalisation layers local."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages, flagged for local normalisation layers."""
        config[LOCAL_NORM_LAYERS] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluate messages, flagged too: each site evaluates with its own layers."""
        config[LOCAL_NORM_LAYERS] = True
        return super().configure_evaluate(server_round, arrays, config, grid)
