"""Coordinator commands: `fedward provision` (more in the deployment issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.errors import ConfigError
from server.provision import numbered_sites, provision

console = Console()


def provision_command(
    out: Annotated[Path, typer.Option(help="Federation folder to create.")],
    sites: Annotated[int, typer.Option(min=0, help="Number of sites (site-1 ... site-N).")] = 0,
    site: Annotated[list[str] | None, typer.Option(help="A named site (repeatable).")] = None,
    san: Annotated[
        list[str] | None, typer.Option(help="SuperLink DNS name or IP (repeatable; first = address).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing keys and certificates.")] = False,
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one kit per hospital site."""
    names = list(site or []) or numbered_sites(sites)
    if not names:
        raise ConfigError("name the sites with --site NAME (repeatable) or give --sites N")
    fed = provision(out, names, sans=list(san) if san else None, force=force)
    console.print(f"federation [bold]{fed.name}[/bold] at {fed.root} (SuperLink {fed.address})")
    console.print(
        f"CA valid until {fed.ca_expires:%Y-%m-%d}, SuperLink certificate until {fed.server_expires:%Y-%m-%d}"
    )
    for name, kit in fed.sites.items():
        console.print(f"  kit for {name}: {kit.dir}")
    console.print(f"Flower CLI profile: {fed.flwr_config}")
