"""The `fedward` command: one sub-command group per role."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedward.client.cli import app as site_app
from fedward.client.cli import register_node_commands
from fedward.common.errors import FedwardError
from fedward.server.deployment.cli import coordinator_app, provision_command, run_command
from fedward.server.deployment.provision import load_site_kit
from fedward.server.provenance.cli import sign_command, verify_command
from fedward.server.report.cli import report_command
from fedward.simulations.cli import app as sim_app

app = typer.Typer(
    help="fedward: federated learning for hospitals.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(sim_app, name="sim")
register_node_commands(site_app, load_site_kit)  # the kit format lives with provisioning
app.add_typer(site_app, name="site")
app.add_typer(coordinator_app, name="coordinator")
app.command("provision")(provision_command)
app.command("run")(run_command)
app.command("verify")(verify_command)
app.command("sign")(sign_command)
app.command("report")(report_command)


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
