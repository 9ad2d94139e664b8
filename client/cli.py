"""`fedward site`: what hospital IT runs at a site."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedward.client import node
from fedward.client.ledger import LEDGER_FILE, PrivacyLedger
from fedward.client.policy import load_policy, resolve_ledger_dir, validate_policy_for
from fedward.common.errors import ConfigError, FedwardError

if TYPE_CHECKING:
    from fedward.common.config import RunConfig

app = typer.Typer(help="Site (hospital) commands.", no_args_is_help=True)
policy_app = typer.Typer(help="The site's privacy policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
console = Console()


@app.command("budget")
def budget(
    policy: Annotated[
        Path | None, typer.Option(help="Site policy file: its ledger-dir (or folder) holds the ledger.")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="For a site without a policy: the state dir holding the ledger.")
    ] = None,
    accountant: Annotated[str, typer.Option(help="prv or rdp.")] = "prv",
    history: Annotated[bool, typer.Option(help="List every recorded step batch.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Check the ledger's hash chain and head; exit 1 naming the first bad row.")
    ] = False,
) -> None:
    """Privacy spent per data set: ε composed over every recorded step, cap and what is left."""
    site_policy = load_policy(policy) if policy else None
    if policy is not None and site_policy is not None:
        folder = resolve_ledger_dir(site_policy, policy)
    elif state_dir is not None:
        folder = state_dir
    else:
        raise ConfigError("say where the ledger is: --policy FILE (a site with a policy) or --state-dir DIR")
    ledger_file = folder / LEDGER_FILE
    if not ledger_file.is_file():
        raise ConfigError(f"no privacy ledger at {ledger_file}: this site has not trained privately yet")
    ledger = PrivacyLedger(folder)
    if verify:
        problem = ledger.verify()
        if problem is not None:
            console.print(f"[red]ledger {ledger_file} fails verification[/red]: {problem}", highlight=False)
            raise typer.Exit(1)
        console.print(f"[green]ok[/green] {ledger_file}: hash chain and head intact", highlight=False)
        return
    table = Table(title=f"privacy ledger {ledger_file}")
    for col in ("data set", "patients", "runs", "steps", "δ", "ε spent", "ε cap", "ε left", "last used"):
        table.add_column(col, justify="left" if col == "data set" else "right")
    for summary in ledger.datasets():
        rows = ledger.rows(summary.fingerprint)
        delta = site_policy.delta if site_policy else (rows[-1].delta if rows else 1e-5)
        spent = ledger.spent(summary.fingerprint, delta, accountant)  # shared patients' history included
        cap = site_policy.epsilon_cap if site_policy else math.inf
        table.add_row(
            summary.fingerprint[:16], str(summary.patients), str(summary.runs), str(summary.steps),
            f"{delta:.3g}", f"{spent:.3f}", "–" if math.isinf(cap) else f"{cap:g}",
            "–" if math.isinf(cap) else f"{cap - spent:.3f}", f"{summary.last_recorded:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    console.print(table)
    if history:
        for summary in ledger.datasets():
            detail = Table(title=f"history of {summary.fingerprint[:16]}")
            for col in ("recorded", "run", "round", "task", "kind", "σ", "q", "steps"):
                detail.add_column(col)
            for row in ledger.rows(summary.fingerprint):
                detail.add_row(
                    f"{row.recorded_at:%Y-%m-%d %H:%M:%S}", row.run_id, str(row.server_round), row.task,
                    row.kind if row.kind != "reserve" else "reserved", f"{row.noise_multiplier:.4g}",
                    f"{row.sample_rate:.4g}", str(row.steps),
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


@app.command("deidentify")
def deidentify(
    src: Annotated[Path, typer.Argument(metavar="IN", help="Site folder with DICOM files (read only).")],
    dst: Annotated[Path, typer.Argument(metavar="OUT", help="New (or empty) folder for the copy.")],
    secret_file: Annotated[
        Path | None,
        typer.Option(help="File with the site secret for the keyed pseudonyms (else $FEDWARD_SITE_SECRET)."),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(help="Log of what changed per file (JSON lines; default OUT/deidentify-log.jsonl)."),
    ] = None,
) -> None:
    """Write a de-identified copy of IN's DICOM files to OUT (PS3.15 Basic Profile, keyed pseudonyms,
    per-patient date shift); other files are skipped and listed."""
    from fedward.client.dicom.deidentify import (  # pydicom only for this command
        deidentify_folder,
        load_secret,
    )

    result = deidentify_folder(src, dst, load_secret(secret_file), log_path=log)
    table = Table(title=f"de-identified copy {result.target}")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, count in (
        ("DICOM files written", result.written),
        ("patients", len(result.patients)),
        ("studies", len(result.studies)),
        ("series", len(result.series)),
        ("manifest rows", result.manifest_rows),
        ("masks rewritten", result.masks),
        ("files skipped", len(result.skipped)),
    ):
        table.add_row(label, str(count))
    console.print(table)
    for source, reason in result.skipped[:20]:
        _say(f"skipped the input with source-hash {source} (paths are not printed): {reason}")
    if len(result.skipped) > 20:
        _say(f"... and {len(result.skipped) - 20} more skipped (see the log)")
    for note in result.notes:
        _say(note)
    _say(f"log: {result.log}")
    gate = result.gate
    if gate is None or not gate.passed:
        problems = gate.problems() if gate else ["the PHI gate did not run"]
        raise FedwardError("the de-identified copy does not pass the PHI gate:\n  " + "\n  ".join(problems))
    console.print(
        f"[green]PHI gate passed[/green]: {gate.files_checked} DICOM file(s) checked in {result.target}"
    )


# ----------------------------------------------------------------------------- the node

KitOption = Annotated[Path, typer.Option(help="This site's kit folder (from the coordinator).")]
DataOption = Annotated[Path, typer.Option(help="Folder with this site's data (read only).")]
StateOption = Annotated[
    Path | None,
    typer.Option(help="Writable folder for per-run state and Flower files (default: kit's state-dir)."),
]
PolicyOption = Annotated[Path | None, typer.Option(help="Site policy TOML (default: the kit's policy-file).")]
SuperlinkOption = Annotated[
    str | None, typer.Option(help="Coordinator HOST:PORT (default: the address in the kit's README.md).")
]


def register_node_commands(site_app: typer.Typer, load_kit: node.KitLoader) -> None:
    """Add `site check` and `site start`; `load_kit` reads a site kit (`server.deployment.provision`)."""

    @site_app.command("check")
    def check(
        data: DataOption,
        kit: Annotated[
            Path | None, typer.Option(help="This site's kit: also check kit, policy, state and coordinator.")
        ] = None,
        task: Annotated[
            list[str] | None,
            typer.Option(
                help="Task(s) to check the data for (repeatable; default: the policy's allowed tasks)."
            ),
        ] = None,
        report: Annotated[
            Path, typer.Option("--json", help="Where to write the data report as JSON.")
        ] = Path("fedward-data-report.json"),
        state: StateOption = None,
        policy: PolicyOption = None,
        superlink: SuperlinkOption = None,
        connect: Annotated[
            bool, typer.Option(help="With --kit: also check the TLS connection to the coordinator.")
        ] = True,
        contrasts: Annotated[
            str | None,
            typer.Option(
                help="MRI tasks: the contrasts the run will ask for (its mri-contrasts, e.g. t1ce,flair); "
                "read the data with them and count, per contrast, the patients who lack it."
            ),
        ] = None,
        image_depth: Annotated[
            int | None,
            typer.Option(min=0, help="MRI tasks: the run's image-depth (slices; 0 for 2D image folders)."),
        ] = None,
    ) -> None:
        """Report what the site's data holds, as a run would read it (classes, missing values, skipped
        files, PHI, unit conversions); with --kit also check kit, policy, state and the coordinator.
        Exits non-zero when something would stop training."""
        site_policy = load_policy(policy) if policy else None
        if kit is not None:
            plan = node.prepare_node(kit, data, load_kit, state=state, policy=policy, superlink=superlink)
            if connect:
                node.check_coordinator(plan.superlink, plan.kit.ca_cert)
            _print_plan(plan, connected=connect)
            site_policy = plan.policy
        tasks = list(task or (site_policy.allowed_tasks if site_policy else ["ckd"]))
        wanted = _contrasts(contrasts) if contrasts is not None else None
        from fedward.common.config import RunConfig

        settings = RunConfig() if image_depth is None else RunConfig(image_depth=image_depth)
        if not print_data_reports(data, tasks, site_policy, report, contrasts=wanted, config=settings):
            raise typer.Exit(1)

    @site_app.command("start")
    def start(
        kit: KitOption,
        data: DataOption,
        state: StateOption = None,
        policy: PolicyOption = None,
        superlink: SuperlinkOption = None,
        port: Annotated[
            int, typer.Option(help="Local Runtime API port (127.0.0.1 only).")
        ] = node.RUNTIME_PORT,
        host: Annotated[
            str, typer.Option(help="Runtime API interface (0.0.0.0 for a SuperExec container).")
        ] = ("127.0.0.1"),
        superexec: Annotated[
            bool,
            typer.Option(
                help="Run fedward's app-checking SuperExec beside the SuperNode (--no-superexec: one "
                "runs elsewhere, `fedward site superexec`, e.g. in another container)."
            ),
        ] = True,
        max_retries: Annotated[
            int | None, typer.Option(help="Reconnection attempts before giving up (default: unlimited).")
        ] = None,
        max_wait_time: Annotated[
            float | None,
            typer.Option(help="Seconds of failed reconnection before giving up (default: unlimited)."),
        ] = None,
        connect_timeout: Annotated[float, typer.Option(help="Seconds for the first TLS check.")] = 10.0,
    ) -> None:
        """Check everything, then run this site's SuperNode and its app-checking SuperExec until
        Ctrl-C / SIGTERM."""
        plan = node.prepare_node(kit, data, load_kit, state=state, policy=policy, superlink=superlink)
        node.check_coordinator(plan.superlink, plan.kit.ca_cert, timeout=connect_timeout)
        _print_plan(plan, connected=True)
        command = node.supernode_command(
            plan,
            host=host,
            port=port,
            max_retries=max_retries,
            max_wait_time=max_wait_time,
        )
        gate = node.superexec_command(plan, port=port, parent_pid=os.getpid()) if superexec else None
        code, output = node.run_supernode(command, node.node_env(plan), superexec=gate)
        problem = node.explain_exit(code, output, plan)
        if problem:
            raise FedwardError(problem)


@app.command("superexec")
def superexec(
    app_key: Annotated[Path, typer.Option(help="The kit's app-signing-ed25519.pub.")],
    runtime_api_address: Annotated[
        str, typer.Option(help="The SuperNode's Runtime API, HOST:PORT (e.g. 127.0.0.1:9094).")
    ],
    policy: Annotated[
        Path | None, typer.Option(help="Site policy TOML: its allowed-apps, if any, also apply.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Plain HTTP to the Runtime API (loopback or an internal network only).")
    ] = False,
    root_certificates: Annotated[
        Path | None, typer.Option(help="CA certificate of the Runtime API's TLS certificate.")
    ] = None,
    parent_pid: Annotated[int | None, typer.Option(help="Stop when this process exits.")] = None,
) -> None:
    """Run ClientApps for a SuperNode in process isolation, each only after its app bundle is verified
    against the kit's app-signing key and the policy's allowed-apps (refusals are logged here)."""
    from fedward.client.app_gate import Gate, run_gated_superexec
    from fedward.common.app_signature import load_public_key

    load_public_key(app_key)  # a missing or bad key stops here, not at the first task
    if policy is not None:
        load_policy(policy)
    if insecure == (root_certificates is not None):
        raise ConfigError("give exactly one of --insecure and --root-certificates for the Runtime API")
    run_gated_superexec(
        runtime_api_address,
        Gate(app_key.expanduser().resolve(), policy.expanduser().resolve() if policy else None),
        insecure=insecure,
        root_certificates=str(root_certificates) if root_certificates else None,
        parent_pid=parent_pid,
    )


def _print_plan(plan: node.NodePlan, *, connected: bool) -> None:
    samples = f", {plan.training_samples} training rows" if plan.training_samples is not None else ""
    _say(f"fedward: site {plan.site}: data {plan.data_dir}{samples}")
    _say(
        f"fedward: policy {plan.policy_file} (tasks {', '.join(plan.policy.allowed_tasks)}, "
        f"lifetime ε cap {plan.policy.epsilon_cap:g}); state {plan.state_dir}"
    )
    reached = "reached, certificate verified" if connected else "not contacted"
    _say(f"fedward: coordinator {plan.superlink}: {reached}")


def _contrasts(text: str) -> tuple[str, ...]:
    """`--contrasts t1ce,flair` as canonical names; ConfigError naming the option otherwise."""
    from fedward.common.data.mri.sample import parse_contrasts

    try:
        return parse_contrasts(text)
    except ValueError as exc:
        raise ConfigError(f"--contrasts: {exc}") from None


def print_data_reports(
    data: Path,
    tasks: list[str],
    site_policy,
    json_path: Path,
    *,
    contrasts: tuple[str, ...] | None = None,
    config: RunConfig | None = None,
) -> bool:
    """Check `data` for each task (MRI tasks with `contrasts`, when given), print the reports and write
    them as JSON; True when none blocks."""
    from fedward.client.data_report import check_site_data, print_report

    gate = site_policy.phi_gate if site_policy else "block"
    least = site_policy.min_samples if site_policy else 1
    reports = [
        check_site_data(
            data, t, config=config, phi_gate=gate, min_samples=least, policy=site_policy, contrasts=contrasts
        )
        for t in tasks
    ]
    for one in reports:
        print_report(one, console)
    json_path.write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    console.print(f"data report written to {json_path}")
    return all(r.ok for r in reports)


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)
