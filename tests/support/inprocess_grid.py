"""Run fedward's real ServerApp and ClientApp code in one process, without Ray or a SuperLink.

`InProcessGrid` is a Flower `Grid` that delivers each message to the real ClientApp with one Context
per site, and passes every message through Flower's protobuf serialisation both ways, as the wire
would. It records every instruction the server sends and every reply a site sends, for tests of
what leaves a site. Needs the `flower_identity` fixture (Messages can only be created inside a Flower
process otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from fedward.client.app import site_app
from fedward.client.audit_mod import audit_mod
from fedward.client.hostile import hostile_mod
from fedward.client.simulated_faults import fault_mod
from fedward.common.config import RunConfig
from fedward.server.app import main as server_main

FIRST_NODE = 101
client_app = site_app(
    fault_mod, hostile_mod, audit_mod
)  # as a simulation builds it (simulations/local_runtime.py)


class ServerCrashed(RuntimeError):
    """Raised by the grid to emulate the coordinator dying mid-round."""


def _wire(message: Message) -> Message:
    """The message as the other side receives it (serialised and parsed back)."""
    return message_from_proto(message_to_proto(message))


class InProcessGrid:
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(
        self,
        run_config: dict[str, Any],
        num_sites: int,
        crash: Callable[[Message], bool] | None = None,
        app: Callable[[Message, Context], Message] | None = None,
    ) -> None:
        self.contexts = {
            FIRST_NODE + i: Context(
                run_id=7,
                node_id=FIRST_NODE + i,
                node_config={"partition-id": i, "num-partitions": num_sites},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(num_sites)
        }
        self.crash = crash
        self.app = app or client_app  # a test may hand its own ClientApp (extra mods)
        self.replies: list[Message] = []  # everything the sites sent, as sent (the strategy may cap weights)
        self.sent: list[Message] = []  # every instruction the server sent, in order

    def get_node_ids(self) -> list[int]:
        """All sites are connected."""
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Deliver each message to its site and collect the replies (an exception becomes an Error)."""
        replies = []
        for message in messages:
            if self.crash is not None and self.crash(message):
                raise ServerCrashed(
                    f"crash before {message.metadata.message_type} to node {message.metadata.dst_node_id}"
                )
            received = _wire(message)
            self.sent.append(received)
            try:
                reply = self.app(received, self.contexts[message.metadata.dst_node_id])
            except Exception as exc:  # Flower turns a ClientApp exception into an error reply too
                reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=received)
            self.replies.append(_wire(reply))  # a copy the strategy's in-place changes do not touch
            replies.append(_wire(reply))
        return replies


def run_server(grid: InProcessGrid, run_config: dict[str, Any]) -> None:
    """Run the ServerApp's main function against `grid`."""
    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)
    server_main(grid, context)


def ckd_run_config(data_root: Path, runs_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A complete run config (defaults + overrides) for CKD sites prepared under `data_root`."""
    config = RunConfig().to_flower()
    config.update({"data-root": str(data_root), "runs-dir": str(runs_dir), **overrides})
    return config
