"""The site's gate in front of every ClientApp: only app bundles signed by the federation run here.

Flower 1.42's SuperNode runs whatever FAB the SuperLink hands it. With `--isolation process` it runs
no app code itself: a separately started SuperExec acquires each task from the SuperNode's Runtime
API and launches a process for it (`flwr/supercore/superexec/run_superexec.py`; its executor, in
`executor/subprocess_executor.py`, starts `flwr-clientapp --token ...`). fedward's SuperExec
(`run_gated_superexec`, `fedward site superexec`) is that loop with Flower's own plugin and an
executor that starts this module's process instead (`python -m fedward.client.app_gate`), which does what
`flwr-clientapp` does (`flwr/supernode/runtime/run_clientapp.py`) with one step added: after pulling
the task input (message, context, run, FAB) and before the FAB is installed or any of its code is
imported, it verifies the bundle against the kit's app-signing key and the site policy's
`allowed-apps` (common/app_signature.py). A refused bundle is logged here with the reason, answered
with an error reply (Flower's `ErrorCode.INVALID_FAB`, the site name and the reason, no paths) that
the coordinator sees, and its task ends as failed; nothing of it is installed or imported.

The Runtime API hands a task's input out once (the task then counts as started), so the check cannot
run before `flwr-clientapp` in a separate step; hence the one process that checks and then runs.

Flower starts that process afresh for every message, and a fresh interpreter spends seconds importing
torch and Opacus before its first line of work (benchmarks/deployed_round.py). The executor therefore
keeps one warm worker, the standard library's fork server with the heavy third-party libraries imported
once (`WARM_IMPORTS`), and forks each task's process from it: still one process per task, gated as
before, but without the import. The worker imports no fedward module and no bundle code (a bundle's
modules are imported afresh in each task's process, after its check), holds no site data and no key,
and starts no thread or connection before forking. Where the platform has no fork server, or the worker
cannot start, each task gets a fresh interpreter as before.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING

from fedward.client.policy import load_policy
from fedward.common.app_signature import AppIdentity, AppRefused, load_public_key, verify_fab
from fedward.common.errors import FedwardError

if TYPE_CHECKING:  # Flower is imported where it is used: `fedward site` starts fast
    from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult

GATE_MODULE = "fedward.client.app_gate"
WARM_IMPORTS = (
    "numpy", "torch", "opacus", "pandas", "scipy.stats", "sklearn.metrics", "monai.networks.nets",
    "flwr.app", "flwr.clientapp", "flwr.supernode.runtime.run_clientapp", "cryptography.hazmat.primitives",
)  # fmt: skip
"""Third-party modules the warm worker imports once (a missing one is skipped); never fedward's own."""
POLL_SECONDS = 0.2
"""How often the SuperExec asks its SuperNode for a new task (Flower's default 1 s; a local call)."""


@dataclass(frozen=True)
class Gate:
    """What a site accepts: bundles signed with `app_key`, and named in the policy's `allowed-apps`
    when the policy file has that key. Both files are read afresh for every task."""

    app_key: Path
    policy_file: Path | None = None

    def check(self, fab: bytes) -> AppIdentity:
        """The bundle's identity when it may run here; AppRefused otherwise."""
        try:
            key = load_public_key(self.app_key)
            allowed = load_policy(self.policy_file).allowed_apps if self.policy_file else None
        except FedwardError as exc:  # the site's own files: refuse, and say why in the site's log only
            raise AppRefused("site-config", f"the site cannot check app bundles ({exc})") from exc
        return verify_fab(fab, key, allowed=allowed)

    def args(self) -> list[str]:
        """Command-line form, for the process that runs each task."""
        policy = ["--policy-file", str(self.policy_file)] if self.policy_file else []
        return ["--app-key", str(self.app_key), *policy]


# ----------------------------------------------------------------------------- the SuperExec


def run_gated_superexec(
    runtime_api_address: str,
    gate: Gate,
    *,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
) -> None:
    """Flower's SuperExec loop for ClientApp tasks, launching each through the gate (runs until a
    signal, or until `parent_pid` exits)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore import log
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.constant import TaskType
    from flwr.supercore.exit import register_signal_handlers
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.executor import LaunchResultStatus
    from flwr.supercore.superexec.plugin import AutoExecPlugin
    from flwr.supercore.telemetry import EventType
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    executor = GatedExecutor(gate)
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=validate_and_resolve_root_certificates(root_certificates, insecure),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    register_signal_handlers(
        event_type=EventType.RUN_SUPEREXEC_LEAVE,
        exit_message="fedward SuperExec stopped.",
        exit_handlers=[client.close],
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        runtime_dependency_install=False,  # a site never downloads what a bundle asks for
        executor=executor,
    )
    log(INFO, "fedward SuperExec: ClientApps run only from bundles signed with %s", gate.app_key)
    try:
        while True:
            request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
            reply = client.AcquireTask(request)
            if reply.HasField("task") and reply.token:
                result = plugin.launch_task(token=reply.token, task=reply.task)
                if result.status != LaunchResultStatus.ACCEPTED:
                    log(WARNING, "task %d not launched: %s", reply.task.task_id, result.message)
            time.sleep(POLL_SECONDS)
    finally:
        client.close()


class GatedExecutor:
    """Flower's subprocess executor, with the gated ClientApp process in place of `flwr-clientapp`
    (the same arguments, plus the gate's)."""

    def __init__(self, gate: Gate) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self.gate = gate
        self._flower = SubprocessExecutor()  # capacity, reconcile and close: Flower's (no-ops)
        self.get_eligible_capacity = self._flower.get_eligible_capacity
        self.wait_for_capacity = self._flower.wait_for_capacity
        self.reconcile = self._flower.reconcile
        self.close = self._flower.close
        self._workers = _start_warm_worker()
        self._tasks: list[multiprocessing.process.BaseProcess] = []

    def worker_pid(self) -> int | None:
        """The warm worker's process id, or None when each task starts a fresh interpreter."""
        if self._workers is None:
            return None
        from multiprocessing import forkserver

        return forkserver._forkserver._forkserver_pid  # the standard library keeps it private

    def start_task(self, argv: list[str]) -> multiprocessing.process.BaseProcess | subprocess.Popen[bytes]:
        """One gated ClientApp process for `argv` (the task's and the gate's arguments): forked from the
        warm worker, or a fresh interpreter when there is none."""
        self._tasks = [task for task in self._tasks if task.is_alive()]  # reap the finished ones
        if self._workers is not None:
            try:
                task = self._workers.Process(target=main, args=(argv,), name="fedward-clientapp")
                task.start()
            except OSError as exc:  # the worker died and cannot restart: fresh interpreters from now on
                log_warning(f"fedward SuperExec: warm worker unavailable ({exc}); starting tasks afresh")
                self._workers = None
            else:
                self._tasks.append(task)
                return task
        return subprocess.Popen([sys.executable, "-m", GATE_MODULE, *argv])  # our own Python and module

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Start the gated process for a ClientApp task; refuse any other kind of task."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"a site's SuperExec runs ClientApps only, not {spec.task_type}")
        args = ["--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        self.start_task([*args, *self.gate.args()])
        return LaunchResult.accepted()


def _start_warm_worker() -> multiprocessing.context.BaseContext | None:
    """The fork server with `WARM_IMPORTS` imported, started now (so the first task does not wait for it);
    None where the platform has none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WARM_IMPORTS))
    try:
        forkserver.ensure_running()
    except OSError as exc:
        log_warning(f"fedward SuperExec: no warm worker ({exc}); each task starts a fresh interpreter")
        return None
    return context


def log_warning(text: str) -> None:
    """A warning in the SuperExec's log (Flower's logger, as the rest of this module)."""
    from flwr.supercore import log

    log(WARNING, "%s", text)


# ----------------------------------------------------------------------------- the ClientApp process


def _bundle_packages(fab: bytes) -> set[str]:
    """Top-level module and package names a bundle provides."""
    with zipfile.ZipFile(BytesIO(fab)) as archive:
        names = archive.namelist()
    tops = {n.split("/", 1)[0] for n in names if "/" in n and not n.startswith(".")}
    tops |= {n[:-3] for n in names if "/" not in n and n.endswith(".py")}
    return tops


def _forget_modules(packages: set[str]) -> None:
    """Drop already imported modules the bundle also provides (this gate imported the site's own
    `client` and `common`), so that the verified bundle's code is what Flower then imports."""
    for name in [m for m in sys.modules if m.split(".", 1)[0] in packages]:
        del sys.modules[name]


def run_gated_clientapp(
    runtime_api_address: str,
    token: str,
    gate: Gate,
    *,
    insecure: bool,
    certificates: bytes | None = None,
    parent_pid: int | None = None,
) -> None:
    """`flwr-clientapp` (Flower 1.42's `run_clientapp`, no runtime dependency installation) with the
    bundle verified before it is installed or loaded. Exits the process like Flower does."""
    from flwr.app import Context, Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.telemetry import EventType
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    heartbeat: HeartbeatSender | None = None
    message: Message | None = None
    reply: Message | None = None
    context: Context | None = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    exit_code = ExitCode.SUCCESS

    def on_exit() -> None:
        retry_invoker.max_tries = 1
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(
        event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE, exit_message="Task stopped.", exit_handlers=[on_exit]
    )
    try:
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        site = str(context.node_config.get("site-id", "this site"))
        try:
            identity = gate.check(fab.content)
        except AppRefused as refusal:
            log(
                ERROR,
                "fedward: site %s REFUSED app bundle %s %s (FAB sha256 %s) of run %s [%s]: %s",
                site, run.fab_id, run.fab_version, fab.hash_str, run.run_id, refusal.code, refusal,
            )  # fmt: skip
            details = f"site {site} refused the app bundle [{refusal.code}]: {refusal}"
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=details), reply_to=message)
            exit_code = ExitCode.TASK_PROC_EXCEPTION
        else:
            log(INFO, "fedward: site %s verified app %s of run %s", site, identity, run.run_id)
            install_from_fab(fab.content, skip_prompt=True)
            _forget_modules(_bundle_packages(fab.content))
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            client_app = load(run.fab_id, run.fab_version, fab.hash_str)
            reply = client_app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # as Flower's run_clientapp: an error reply, the task fails
        code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            code, reason = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
                "An exception was raised when attempting to load `ClientApp`",
            )
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        sub_status, details = SubStatus.FAILED, reason
        if message:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
        exit_code = (
            ExitCode.COMMON_APP_IMPORT_ERROR if isinstance(ex, ImportError) else ExitCode.TASK_PROC_EXCEPTION
        )
    finally:
        if reply and context:
            try:
                push_message(client, reply, context)
            except Exception as ex:  # as Flower: log, and exit with its code
                log(ERROR, "Failed to push reply message", exc_info=ex)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


def _parser() -> argparse.ArgumentParser:
    from flwr.common.args import add_args_flwr_app_common

    parser = argparse.ArgumentParser(description="Run a Flower ClientApp after checking its bundle")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--app-key", required=True, type=Path, help="The kit's app-signing public key.")
    parser.add_argument("--policy-file", type=Path, default=None, help="Site policy (allowed-apps).")
    add_args_flwr_app_common(parser, include_runtime_dependency_install=False)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m fedward.client.app_gate`: one gated ClientApp task (started by `GatedExecutor`)."""
    from flwr.common.args import try_obtain_flwr_app_token
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    args = _parser().parse_args(argv)
    run_gated_clientapp(
        args.runtime_api_address,
        try_obtain_flwr_app_token(args),
        Gate(args.app_key, args.policy_file),
        insecure=args.insecure,
        certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
