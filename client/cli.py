"""`fedward site`: what hospital IT runs at a site."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from client.ledger import PrivacyLedger
from client.policy import load_policy, validate_policy_for
from common.errors import ConfigError

app = typer.Typer(help="Site (hospital) commands.", no_args_is_help=True)
policy_app = typer.Typer(help="The site's privacy policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
console = Console()


@app.command("budget")
def budget(
    state_dir: Annotated[Path, typer.Option(help="The site's state directory (node config state-dir).")],
    policy: Annotated[Path | None, typer.Option(help="Site policy file, for the cap and δ.")] = None,
    accountant: Annotated[str, typer.Option(help="prv or rdp.")] = "prv",
    history: Annotated[bool, typer.Option(help="List every recorded step batch.")] = False,
) -> None:
    """Privacy spent per data set: ε composed over every recorded step, cap and what is left."""
    ledger_file = state_dir / "privacy-ledger.sqlite"
    if not ledger_file.is_file():
        raise ConfigError(f"no privacy ledger at {ledger_file}: this site has not trained privately yet")
    ledger = PrivacyLedger(state_dir)
    site_policy = load_policy(policy) if policy else None
    table = Table(title=f"privacy ledger {ledger_file}")
    for col in ("data set", "runs", "steps", "δ", "ε spent", "ε cap", "ε left", "last used"):
        table.add_column(col, justify="left" if col == "data set" else "right")
    for summary in ledger.datasets():
        rows = ledger.rows(summary.fingerprint)
        delta = site_policy.delta if site_policy else rows[-1].delta
        spent = ledger.spent(summary.fingerprint, delta, accountant)
        cap = site_policy.epsilon_cap if site_policy else math.inf
        table.add_row(
            summary.fingerprint[:16], str(summary.runs), str(summary.steps), f"{delta:.3g}", f"{spent:.3f}",
            "–" if math.isinf(cap) else f"{cap:g}", "–" if math.isinf(cap) else f"{cap - spent:.3f}",
            f"{summary.last_recorded:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    console.print(table)
    if history:
        for summary in ledger.datasets():
            detail = Table(title=f"history of {summary.fingerprint[:16]}")
            for col in ("recorded", "run", "round", "task", "σ", "q", "steps"):
                detail.add_column(col)
            for row in ledger.rows(summary.fingerprint):
                detail.add_row(
                    f"{row.recorded_at:%Y-%m-%d %H:%M:%S}", row.run_id, str(row.server_round), row.task,
                    f"{row.noise_multiplier:.4g}", f"{row.sample_rate:.4g}", str(row.steps),
                )  # fmt: skip
            console.print(detail)


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    samples: Annotated[int, typer.Option(min=0, help="Training samples at the site (checks δ ≤ 1/n).")] = 0,
) -> None:
    """Validate a site policy file; exits non-zero with the reason when it is not valid."""
    site_policy = load_policy(file)
    if samples:
        validate_policy_for(site_policy, samples)
    console.print(
        f"[green]ok[/green] {file}: lifetime ε cap {site_policy.epsilon_cap:g} at δ {site_policy.delta:g}"
    )
