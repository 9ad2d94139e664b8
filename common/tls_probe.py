"""One TLS handshake with a federation endpoint, its certificate checked against the federation's CA.

The site (`fedward site start` checks the coordinator before starting a SuperNode) and the coordinator
(`fedward coordinator start` waits until its SuperLink answers) both use it; each turns the failure into
its own message.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from fedward.common.errors import ConfigError


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) as (host without brackets, port); ValueError when malformed."""
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def tls_handshake(address: str, ca_cert: Path, timeout: float) -> None:
    """Connect to `address` and complete a TLS handshake whose certificate `ca_cert` signs for the host.

    Returns when the handshake completes; raises what the socket layer raises otherwise:
    `ssl.SSLCertVerificationError` (another CA or another name), `ssl.SSLError` (any other TLS failure),
    `socket.gaierror` (unresolvable host), `TimeoutError` (no answer) or another `OSError` (refused,
    unreachable); every one of them is an `OSError`. A `ca_cert` that is missing or not a PEM
    certificate is the caller's mistake, not the endpoint's: ConfigError naming the file.
    """
    host, port = split_address(address)
    try:
        context = ssl.create_default_context(cafile=str(ca_cert))
    except OSError as exc:  # ssl.SSLError included: not PEM
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"CA certificate {ca_cert}: cannot be read ({reason}); expected a PEM file"
        ) from exc
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        return
