"""The coordinator's front door: nginx (Debian's package) terminates TLS on the federation's public
address and passes on only what SuperNodes need; the SuperLink itself listens on 127.0.0.1 only.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (`flwr run/ls/log`, `flwr supernode
register/unregister`) and the Runtime API (ServerApp) on ONE HTTPS port, and the open-source build has
no authentication for the Control API (account login needs Flower's enterprise `flwr.ee` package). So:

- `FLEET_PATHS`, exactly the Fleet calls of Flower's SuperNode (flwr/supernode/fleet_http_client.py)
  that a SuperNode with an authentication key makes, go through from anyone (each call is signed with
  the node's registered key; the SuperLink checks it);
- `/v1/control/` goes through only for a TLS client certificate issued by the federation CA to an
  operator (`OPERATOR_OU`, made by `fedward provision`); anyone else gets 403;
- everything else (the Runtime API included) gets 404.

`OperatorTunnel` is how the operator's `flwr` reaches the Control API: `flwr` cannot present a client
certificate, so it talks plain HTTP to a loopback listener of this process, which opens a TLS connection
with the operator's certificate to the proxy for each of its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fedward.common.errors import ConfigError, FedwardError

OPERATOR_OU = "fedward-operator"
"""Organizational unit of the operator client certificate; the proxy admits Control API calls only
from a CA-verified certificate with it."""

FLEET_PATHS = (
    "activate-node",
    "deactivate-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
"""`/v1/fleet/<path>` calls a SuperNode with an authentication key makes (Flower 1.42). Left out:
register-node and unregister-node, which such a node never calls and which the SuperLink refuses
anyway with `--enable-supernode-auth`."""

NGINX_ENV = "FEDWARD_NGINX"
"""Environment variable naming the nginx program (default: `nginx` on PATH, or /usr/sbin/nginx)."""


def nginx_program() -> str:
    """Path of the nginx program; ConfigError naming how to install it when missing."""
    configured = os.environ.get(NGINX_ENV)
    found = configured or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise ConfigError(
            f"nginx not found ({NGINX_ENV}={configured!r}, PATH); the coordinator's TLS proxy needs it: "
            "`apt-get install -y nginx`"
        )
    return found


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy serves, and where the SuperLink it protects listens (on loopback)."""

    listen_host: str
    listen_port: int
    upstream_port: int
    server_cert: Path
    server_key: Path
    ca_cert: Path
    state_dir: Path
    upstream_host: str = "127.0.0.1"
    upstream_name: str = "localhost"
    """Name checked in the SuperLink's certificate (provisioning adds localhost to its SANs)."""


DOCKER_CONFIG = ProxyConfig(
    listen_host="0.0.0.0",
    listen_port=8000,
    upstream_port=8000,
    server_cert=Path("/etc/fedward/superlink.crt"),
    server_key=Path("/etc/fedward/superlink.key"),
    ca_cert=Path("/etc/fedward/ca.crt"),
    state_dir=Path("/tmp/fedward-proxy"),
    upstream_host="superlink",
    upstream_name="superlink",
)
"""The proxy of docker/coordinator.yml and docker/demo.yml: docker/nginx-coordinator.conf is this,
rendered (tests/test_docker_files.py checks they agree)."""


def _listen(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        return str(port)
    if host == "::":
        return f"[::]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_nginx_config(config: ProxyConfig) -> str:
    """The whole nginx.conf: one TLS server, the Fleet allow-list, the operator gate, nothing else."""
    state = config.state_dir
    fleet = "|".join(FLEET_PATHS)
    temp = "\n".join(
        f"    {kind}_temp_path {state / 'nginx-temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Written by `fedward coordinator start` (server/deployment/proxy.py) at every start.
daemon off;
worker_processes 1;
pid {state / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}

http {{
    access_log {state / "proxy-access.log"};
{temp}
    server_tokens off;
    client_max_body_size 1g;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 1h;
    proxy_send_timeout 1h;

    # a Control API call is an operator's only with a CA-verified client certificate of the operator unit
    map "$ssl_client_verify:$ssl_client_s_dn" $fedward_operator {{
        default 0;
        "~^SUCCESS:(.*,)?OU={OPERATOR_OU}(,.*)?$" 1;
    }}

    upstream superlink {{
        server {config.upstream_host}:{config.upstream_port};
        keepalive 16;
    }}

    server {{
        listen {_listen(config.listen_host, config.listen_port)} ssl;
        ssl_certificate {config.server_cert};
        ssl_certificate_key {config.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {config.ca_cert};
        ssl_verify_client optional;
        ssl_verify_depth 1;

        proxy_set_header Connection "";
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {config.ca_cert};
        proxy_ssl_name {config.upstream_name};
        proxy_ssl_session_reuse on;

        # the SuperNodes' Fleet API: each call is signed with a registered node key
        location ~ ^/v1/fleet/({fleet})$ {{
            limit_except POST {{ deny all; }}
            proxy_pass https://superlink;
        }}

        # the Control API: operators only
        location /v1/control/ {{
            if ($fedward_operator = 0) {{ return 403; }}
            proxy_pass https://superlink;
        }}

        location / {{ return 404; }}
    }}
}}
"""


def write_nginx_config(config: ProxyConfig) -> Path:
    """Write `<state>/nginx.conf` (and nginx's temporary folders); return its path."""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (config.state_dir / "nginx-temp" / kind).mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config.state_dir / "nginx.conf"
    path.write_text(render_nginx_config(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def nginx_command(conf: Path) -> list[str]:
    """nginx in the foreground with only `conf` (no /etc/nginx, no default log file)."""
    return [nginx_program(), "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)]


def check_nginx_config(conf: Path) -> None:
    """`nginx -t`: a FedwardError with nginx's own message when the configuration does not load."""
    done = subprocess.run(
        [*nginx_command(conf), "-t"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise FedwardError(f"nginx refused {conf}: {(done.stderr or done.stdout).strip()[-800:]}")


# ----------------------------------------------------------------------------- operator tunnel


class OperatorTunnel:
    """A loopback listener that relays each connection over TLS, with the operator's client certificate,
    to the proxy at `target` (HOST:PORT). Use as a context manager; `address` is where `flwr` connects
    (plain HTTP, 127.0.0.1 only, for as long as the context lasts). The relay runs on an asyncio loop in
    a background thread (asyncio's TLS keeps each connection's reads and writes on one thread)."""

    def __init__(self, target: str, ca_cert: Path, cert: Path, key: Path) -> None:
        host, port = target.rsplit(":", 1)
        self._host, self._port = host.strip("[]"), int(port)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{cert}: cannot load the operator certificate and key ({exc})") from exc
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None, "use OperatorTunnel as a context manager"
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def __enter__(self) -> OperatorTunnel:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(timeout=30)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._context, server_hostname=self._host
            )
        except (OSError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes until `source` ends, then close `sink` (which ends the other direction too)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        sink.close()


@contextlib.contextmanager
def operator_tunnel(target: str, ca_cert: Path, cert: Path, key: Path) -> Iterator[str]:
    """`OperatorTunnel` as a context manager yielding the loopback address."""
    with OperatorTunnel(target, ca_cert, cert, key) as tunnel:
        yield tunnel.address
