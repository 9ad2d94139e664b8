"""Coordinator commands: `fedward provision`, `fedward coordinator start|register`, `fedward run`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedward.common.errors import ConfigError, FedwardError
from fedward.server.deployment import launch, proxy
from fedward.server.deployment.provision import PROVENANCE_KEY, numbered_sites, provision
from fedward.server.deployment.superlink import (
    Registration,
    check_port_free,
    cli_home,
    flower_env,
    free_loopback_port,
    load_federation,
    local_address,
    operator_home,
    register_sites,
    superlink_command,
    supervise,
    wait_until_serving,
)
from fedward.server.provenance.signing import SIGNING_KEY_ENV
from fedward.server.rundir import SUMMARY_FILE, RunDirectory

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


# ----------------------------------------------------------------------------- coordinator


coordinator_app = typer.Typer(help="Coordinator commands: the SuperLink and its sites.", no_args_is_help=True)

FederationOption = Annotated[
    Path, typer.Option("--federation", help="Federation folder made by `fedward provision`.")
]
SuperlinkOption = Annotated[
    str | None,
    typer.Option("--superlink", help="SuperLink HOST:PORT to talk to (default: the provisioned address)."),
]


@coordinator_app.command("start")
def coordinator_start(
    federation: FederationOption,
    host: Annotated[
        str, typer.Option(help="Interface the public HTTPS port (the TLS proxy) listens on.")
    ] = "0.0.0.0",
    port: Annotated[
        int | None, typer.Option(help="The public HTTPS port (default: the provisioned one, 8000).")
    ] = None,
    superlink_port: Annotated[
        int | None,
        typer.Option(help="The SuperLink's own port, on 127.0.0.1 only (default: a free one)."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="State folder (database, Flower home); default <federation>/coordinator/state."),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register every provisioned site's key once serving.")
    ] = True,
) -> None:
    """Run the SuperLink (TLS, SuperNode authentication, state database on disk) on 127.0.0.1 behind
    nginx, which serves the public port: the Fleet API to everyone, the Control API only to the operator's
    client certificate (server/deployment/proxy.py). Stops on Ctrl-C/SIGTERM."""
    fed = load_federation(federation)
    port = port or fed.port
    state_dir = (state or fed.root / "coordinator" / "state").expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "flwr-home").mkdir(exist_ok=True)
    check_port_free(host, port)
    internal = superlink_port or free_loopback_port()
    check_port_free("127.0.0.1", internal)
    command = superlink_command(fed, host="127.0.0.1", port=internal, state_dir=state_dir)
    local = local_address("127.0.0.1", internal)
    front = proxy.ProxyConfig(
        listen_host=host,
        listen_port=port,
        upstream_port=internal,
        server_cert=fed.server_cert,
        server_key=fed.server_key,
        ca_cert=fed.ca_cert,
        state_dir=state_dir,
    )
    conf = proxy.write_nginx_config(front)
    proxy.check_nginx_config(conf)

    def when_serving(proc: subprocess.Popen) -> None:
        wait_until_serving(local, fed.ca_cert, proc)
        _say(f"fedward: SuperLink of {fed.name} serving on {local} only (state {state_dir})")
        if register:
            with cli_home(fed, local) as home:
                _print_registrations(register_sites(fed, home))
        wait_until_serving(local_address(host, port), fed.ca_cert)
        _say(f"fedward: TLS proxy on {host}:{port}: Fleet API for sites, Control API for the operator only")
        _say("fedward: coordinator ready")

    env = flower_env(state_dir / "flwr-home")
    key = fed.root / "coordinator" / PROVENANCE_KEY
    if key.is_file():  # the ServerApp (a child of the SuperLink) signs each run's provenance with it
        env.setdefault(SIGNING_KEY_ENV, str(key))
    code = supervise(command, env, when_serving, companions=[proxy.nginx_command(conf)])
    if code > 3:  # 0-3: Flower's success and graceful exits on SIGINT/SIGQUIT/SIGTERM; < 0: a signal
        raise FedwardError(f"flower-superlink exited with code {code}")


@coordinator_app.command("register")
def coordinator_register(
    federation: FederationOption,
    superlink: SuperlinkOption = None,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the SuperLink to answer.")] = 0,
) -> None:
    """Register every key in coordinator/site-public-keys with the SuperLink (safe to repeat)."""
    fed = load_federation(federation)
    if wait:
        wait_until_serving(superlink or fed.address, fed.ca_cert, timeout=wait)
    with operator_home(fed, superlink) as home:
        _print_registrations(register_sites(fed, home))


def _print_registrations(done: list[Registration]) -> None:
    for item in done:
        what = f"registered as node {item.node_id}" if item.new else "key already known to the SuperLink"
        if item.rekeyed is not None:
            what += (
                f" with a NEW key (its old key was unregistered, and Flower never re-admits one):"
                f" send {item.rekeyed} to the site"
            )
        _say(f"fedward: site {item.site}: {what}")


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _echo(line: str) -> None:
    print(line, end="", flush=True)


def _echo_progress(line: str) -> None:
    """fedward's own progress lines of the ServerApp log, and Flower's warnings and errors."""
    if line.startswith(("fedward:", "round ")) or "ERROR" in line or "WARNING" in line:
        _echo(line)


def run_command(
    federation: FederationOption,
    run_config: Annotated[
        list[str] | None,
        typer.Option("--run-config", "-c", help="Run config override k=v (repeatable), as for `flwr run`."),
    ] = None,
    superlink: SuperlinkOption = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDWARD_RUNS_DIR",
            help="runs-dir of the ServerApp unless -c sets it (default: <federation>/runs).",
        ),
    ] = None,
    app: Annotated[
        Path | None,
        typer.Option(envvar="FEDWARD_APP", help="fedward source folder to bundle (default: this checkout)."),
    ] = None,
    results_dir: Annotated[
        Path | None,
        typer.Option(help="Where the run directories appear on this machine (default: the runs-dir)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Give up waiting after this many seconds (0: never).")
    ] = 0,
    poll: Annotated[float, typer.Option(min=0.5, help="Seconds between status checks.")] = 3.0,
    verbose: Annotated[
        bool, typer.Option(help="Show the ServerApp's whole log, not only progress and errors.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run directory after its last completed round (its run config; -c wins)."
        ),
    ] = None,
) -> None:
    """Launch a run on the federation and wait for it; fails unless it completed every round."""
    fed = load_federation(federation)
    if resume is not None:
        overrides = launch.resume_overrides(resume.expanduser().resolve(), list(run_config or []))
    else:
        overrides = launch.run_overrides(list(run_config or []), runs_dir or fed.root / "runs")
    run_dir = (results_dir or Path(overrides["runs-dir"])).expanduser().resolve() / overrides["run-name"]
    previous = RunDirectory(run_dir, create=False)
    if resume is None and previous.has(SUMMARY_FILE):
        raise ConfigError(f"{run_dir} already holds a {SUMMARY_FILE}; choose another run-name")
    if resume is not None:
        previous.drop_summary()  # the resumed run writes a new one
    with operator_home(fed, superlink) as home:
        signed = launch.sign_for_run(fed, launch.app_dir(app), home / "signed-app")
        _say(f"fedward: app {signed.identity} signed with the federation's app-signing key")
        run_id = launch.submit_run(fed, home, signed.dir, overrides)
        _say(f"fedward: run {run_id} submitted; run directory {run_dir}")
        stream = launch.LogStream(fed, home, run_id, echo=_echo if verbose else _echo_progress)
        try:
            row = launch.wait_for_run(
                lambda: launch.run_status(fed, home, run_id),
                timeout=timeout or None,
                poll=poll,
                on_change=lambda s: _say(f"fedward: run {run_id} {s}"),
                pause=stream.pause,
            )
        finally:
            stream.close()
    summary = launch.check_outcome(row, run_dir)
    overall = ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(summary.get("overall", {}).items()) if v is not None
    )
    rounds = summary["rounds-completed"]
    _say(f"ok: run {run_id} completed {rounds} rounds in {run_dir}; {overall or 'no metrics'}")
