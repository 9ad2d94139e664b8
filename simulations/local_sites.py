"""The sites of a local simulation as Flower's engine holds them (`simulations/local_runtime.py`).

A module of its own so that Ray pickles `SiteApp` by reference (the runtime runs as `__main__`): each
actor imports this light module, and fedward's ClientApp only when its first message comes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from flwr.app import Context, Message


def with_run_config(config: dict[str, Any]):
    """A ClientApp mod that gives each site the run config for the message (the in-process engine leaves
    it empty, and refuses a context whose run config changed: it is put back afterwards)."""

    def mod(msg, context, call_next):
        empty, context.run_config = context.run_config, dict(config)
        try:
            return call_next(msg, context)
        finally:
            context.run_config = empty

    return mod


class SiteApp:
    """The sites' ClientApp as the simulation engine holds it: only the run config. Flower sends it with
    every message; a Ray actor builds fedward's ClientApp (`fedward.client.app`, torch and the rest) on
    its first message and keeps it, so this process starts Ray without importing any of that first."""

    _built: ClassVar[dict[str, Any]] = {}  # per actor process: run config (JSON) -> the ClientApp

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.key = json.dumps(config, sort_keys=True)  # once, where it is built: not per message

    def __call__(self, message: Message, context: Context) -> Message:
        key = self.key
        app = SiteApp._built.get(key)
        if app is None:
            from fedward.client.app import site_app
            from fedward.client.audit_mod import audit_mod
            from fedward.client.hostile import hostile_mod
            from fedward.client.simulated_faults import fault_mod

            app = SiteApp._built[key] = site_app(
                with_run_config(self.config), fault_mod, hostile_mod, audit_mod
            )  # simulation-only mods
        return app(message=message, context=context)
