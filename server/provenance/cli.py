"""`fedward verify RUN_DIR` and `fedward sign RUN_DIR`: check and (re)make a run's signed provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()

RunDirArgument = Annotated[Path, typer.Argument(help="Run directory (runs/NAME).")]


def verify_command(
    run_dir: RunDirArgument,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="The coordinator's provenance-ed25519.pub the run must be signed with (recommended).",
        ),
    ] = None,
) -> None:
    """Check a run's provenance signature and the sha256 of every artifact; exit 1 on any mismatch."""
    from fedward.server.provenance.manifest import verify_run

    result = verify_run(run_dir, public_key)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if not result.ok:
        console.print(f"[red]FAILED[/red] {escape(str(result.run_dir))}: {len(result.problems)} problem(s)")
        for problem in result.problems:
            console.print(f"  - {escape(problem)}")
        raise typer.Exit(1)
    console.print(
        f"[green]OK[/green] {escape(str(result.run_dir))}: signed by {result.signer}; "
        f"{len(result.artifacts)} artifact(s) match: {', '.join(result.artifacts)}"
    )


def sign_command(
    run_dir: RunDirArgument,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Ed25519 PEM key [default: $FEDWARD_SIGNING_KEY, ~/.fedward/provenance-ed25519.key].",
        ),
    ] = None,
) -> None:
    """Export model.pt to model.safetensors, write MODEL_CARD.md and sign the run's provenance manifest."""
    from fedward.server.export import finalise_run
    from fedward.server.provenance.manifest import MANIFEST_FILE, SIGNATURE_FILE
    from fedward.server.provenance.signing import key_fingerprint, load_private_key, resolve_signing_key

    key_path = resolve_signing_key(key)
    finalise_run(run_dir, key_path)
    fingerprint = key_fingerprint(load_private_key(key_path).public_key())
    run = Path(run_dir).expanduser().resolve()
    console.print(
        f"signed {escape(str(run / MANIFEST_FILE))} ({SIGNATURE_FILE}) with {escape(str(key_path))} "
        f"[dim]({fingerprint})[/dim]"
    )
