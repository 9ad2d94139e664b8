"""The `fedward` command: one sub-command group per role."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from client.cli import app as site_app
from common.errors import FedwardError
from server.cli import provision_command
from simulations.cli import app as sim_app

app = typer.Typer(
    help="fedward: federated learning for hospitals.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(sim_app, name="sim")
app.add_typer(site_app, name="site")
app.command("provision")(provision_command)


def main() -> None:
    """Console entry point: errors meant for people print without a traceback unless --debug."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except FedwardError as exc:
        if debug:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        sys.exit(2)
