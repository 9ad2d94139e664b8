"""Provisioning a federation: a CA, the SuperLink's TLS certificate and one kit per hospital site.

Everything is made in-process with `cryptography` (no openssl or ssh-keygen). Layout under `out`:

    coordinator/ca.crt, ca.key                    the federation's certificate authority
    coordinator/superlink.crt, superlink.key      the SuperLink's TLS certificate (SANs from options)
    coordinator/flwr-config.toml                  Flower CLI profile `[superlink.<name>]`
    coordinator/site-public-keys/<site>.pub       keys to `flwr supernode register`
    coordinator/provenance-ed25519.key, .pub      signs each run's provenance manifest (`fedward verify`)
    coordinator/operator.crt, operator.key        the operator's TLS client certificate: the coordinator's
                                                  proxy serves the Control API only to it (proxy.py)
    coordinator/app-signing-ed25519.key, .pub     signs the app bundle of every run (`fedward run`)
    sites/<site>/ca.crt, <site>.key, <site>.pub   what the hospital receives
    sites/<site>/app-signing-ed25519.pub          the site runs only bundles signed with its key
    sites/<site>/node-config.toml, README.md

Private keys are written with mode 0600 and are never replaced unless `force=True`. Folders get exact
modes whatever the umask: `coordinator/`, `site-public-keys/` and each kit 0700, the federation folder
and `sites/` 0750; public files 0644.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedward.common.app_signature import APP_PUBLIC_KEY, APP_SIGNING_KEY, load_public_key, public_pem
from fedward.common.errors import ConfigError
from fedward.common.tomlfile import read_toml
from fedward.server.deployment.proxy import OPERATOR_OU

SUPERLINK_PORT = 8000
"""The SuperLink's single HTTPS port in Flower 1.42 (Fleet, Control and Runtime APIs)."""
DEFAULT_SANS = ("localhost", "127.0.0.1")
NODE_CONFIG_KEYS = ("site-id", "data-dir", "policy-file", "state-dir")
"""Keys of a site's node-config.toml, passed to the SuperNode as `--node-config FILE`."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CURVE = ec.SECP384R1()
_HASH = hashes.SHA384()
_CLOCK_SKEW = dt.timedelta(minutes=5)
PROVENANCE_KEY = "provenance-ed25519.key"
OPERATOR_CERT = "operator.crt"
OPERATOR_KEY = "operator.key"
"""The operator's TLS client certificate and key in coordinator/ (see server/deployment/proxy.py)."""
"""The coordinator's Ed25519 key that signs run provenance manifests (public half: same stem, `.pub`)."""


@dataclass(frozen=True)
class SiteKit:
    """The files one hospital site receives (its folder can be renamed or moved)."""

    site: str
    dir: Path
    ca_cert: Path
    private_key: Path
    public_key: Path
    node_config: Path
    readme: Path
    app_key: Path  # the coordinator's app-signing public key (common/app_signature.py)


@dataclass(frozen=True)
class Federation:
    """What `provision` wrote: the coordinator's files and one kit per site."""

    name: str
    address: str
    root: Path
    coordinator: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    flwr_config: Path
    site_public_keys: dict[str, Path]
    sites: dict[str, SiteKit]
    ca_expires: dt.datetime
    server_expires: dt.datetime
    sans: tuple[str, ...] = field(default=DEFAULT_SANS)
    provenance_key: Path | None = None
    app_signing_key: Path | None = None
    operator_cert: Path | None = None
    operator_key: Path | None = None


# ----------------------------------------------------------------------------- validation


def validate_name(value: str, what: str) -> str:
    """A site or federation name: 1-64 letters, digits, '-' or '_' (safe as a file name and TOML key)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r}: use 1-64 letters, digits, '-' or '_'")
    return value


def validate_sites(sites: Iterable[str]) -> list[str]:
    """Check every site name and reject duplicates (case-insensitively: kits may land on such disks)."""
    names = [validate_name(s, "site name") for s in sites]
    if not names:
        raise ConfigError("sites: give at least one site")
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise ConfigError(f"site name {name!r} given twice (as {seen[name.lower()]!r} and {name!r})")
        seen[name.lower()] = name
    return names


def numbered_sites(count: int, prefix: str = "site") -> list[str]:
    """`--sites N`: site-1 ... site-N."""
    if count < 1:
        raise ConfigError(f"--sites: expected a positive number of sites, got {count}")
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def _parse_sans(sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for raw in sans:
        value = raw.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
            continue
        except ValueError:
            pass
        labels = value.rstrip(".").split(".")
        if not value or len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(f"SAN {raw!r}: expected a DNS name (e.g. fl.hospital.org) or an IP address")
        names.append(x509.DNSName(value.rstrip(".")))
    if not names:
        raise ConfigError("sans: give at least one DNS name or IP address for the SuperLink")
    return names


def _host_port(host: str, port: int) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# ----------------------------------------------------------------------------- file writing


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Write a private key with mode 0600; never replace an existing file unless `force`."""
    if force:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        tmp = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path}: a private key is already there; pass --force to replace it") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits; make the mode exact
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        (tmp or path).unlink(missing_ok=True)
        raise
    if tmp is not None:
        os.replace(tmp, path)


PRIVATE_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o750


def _make_dir(path: Path, mode: int) -> None:
    """Create `path` (and missing parents, made with `mode` too) and set its mode exactly: the umask
    may have left group/other bits (umask 000 gives 0777)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    for folder in (path, *missing):
        folder.chmod(mode)


def writable_by_others(path: Path) -> str | None:
    """Why `path` (file or folder) cannot be trusted as the coordinator's own: writable by group or
    others, or a symbolic link; None when it is not."""
    try:
        info = path.lstat()
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return f"{path}: a symbolic link; expected the file itself"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"{path}: writable by other accounts (mode {mode:04o}); run `chmod go-w` on it"
    return None


def _write_public(path: Path, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(raw)
    tmp.chmod(0o644)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- crypto


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(name: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedward"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedward {name} CA"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _HASH)
    )


def _make_server_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    first = sans[0].value
    public = key.public_key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedward"),
                    x509.NameAttribute(NameOID.COMMON_NAME, str(first)),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, _HASH)
    )


def _make_operator_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """The operator's TLS client certificate (OU `OPERATOR_OU`, client authentication only)."""
    public = key.public_key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "key_cert_sign"),
        False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedward"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_OU),
                    x509.NameAttribute(NameOID.COMMON_NAME, "operator"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, crl_sign=False, encipher_only=False, decipher_only=False, **usage
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, _HASH)
    )


def write_provenance_key(folder: Path, *, force: bool = False) -> Path:
    """A fresh Ed25519 signing key: `<folder>/provenance-ed25519.key` (PEM PKCS8, mode 0600) and the
    public key `provenance-ed25519.pub` (PEM). An existing key is never replaced unless `force`."""
    if not folder.exists():
        _make_dir(folder, PRIVATE_DIR_MODE)
    path = folder / PROVENANCE_KEY
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_private(path, private, force=force)
    _write_public(path.with_suffix(".pub"), public)
    return path


def write_app_signing_key(folder: Path, *, force: bool = False) -> Path:
    """A fresh Ed25519 app-signing key: `<folder>/app-signing-ed25519.key` (PEM PKCS8, mode 0600) and
    its public key `app-signing-ed25519.pub` (PEM), which every site kit carries. An existing key is
    never replaced unless `force`."""
    path = folder / APP_SIGNING_KEY
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, private, force=force)
    _write_public(folder / APP_PUBLIC_KEY, public_pem(key))
    return path


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH-style `SHA256:...` fingerprint of an `ecdsa-sha2-nistp384 AAAA... comment` line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _site_keys(site: str, federation: str) -> tuple[bytes, str]:
    """A fresh EC P-384 key pair for SuperNode authentication: (OpenSSH private, public line)."""
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {site}@{federation}\n"


# ----------------------------------------------------------------------------- text files


def _day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config_template(site: str) -> str:
    """The node-config.toml a site starts from; `fedward site start --data DIR` fills in data-dir."""
    base = f"/srv/fedward/{site}"
    return (
        f"# fedward node configuration for site {site!r}.\n"
        "# Passed to the Flower SuperNode as `--node-config node-config.toml`; values are read by the\n"
        "# fedward ClientApp on this machine only and are never sent to the coordinator.\n"
        f"site-id = {_toml_str(site)}\n"
        "# Folder with this site's data (set by `fedward site start --data DIR`).\n"
        f"data-dir = {_toml_str(base + '/data')}\n"
        "# Local rules for this site (which tasks and privacy budgets it accepts).\n"
        f"policy-file = {_toml_str(base + '/policy.toml')}\n"
        "# Where the node keeps its own records between rounds (privacy budget spent, logs).\n"
        f"state-dir = {_toml_str(base + '/state')}\n"
    )


def _flwr_config(name: str, address: str, ca_cert: Path, ca_expires: dt.datetime, sites: list[str]) -> str:
    register = "\n".join(
        f"#   flwr supernode register site-public-keys/{s}.pub {name} --name {s}" for s in sites
    )
    return (
        f"# Flower CLI profile for the fedward federation {name!r}.\n"
        "# Merge this section into $FLWR_HOME/config.toml (default ~/.flwr/config.toml); then, from this\n"
        "# folder, with the SuperLink running, admit each site's SuperNode:\n"
        f"{register}\n"
        f"#   flwr supernode list {name}\n"
        f"# The CA certificate below is valid until {_day(ca_expires)}.\n"
        f"[superlink.{name}]\n"
        f"address = {_toml_str(address)}\n"
        f"root-certificates = {_toml_str(str(ca_cert))}\n"
    )


def _readme(site: str, name: str, address: str, fingerprint: str, ca_expires: dt.datetime, port: int) -> str:
    return f"""# fedward site kit: {site}

This folder lets the hospital site **{site}** join the federated-learning network **{name}**.
Patient data never leaves this machine: only model updates are sent, over an encrypted connection.

## What each file is

- `{site}.key`: this site's private key. It proves to the coordinator that this node really is
  {site}. **Secret.**
- `{site}.pub`: the matching public key. The coordinator already has a copy. Not secret.
- `ca.crt`: the federation's certificate authority. The node uses it to check that it is talking to the
  real coordinator. Not secret.
- `node-config.toml`: local settings (site name, data folder, policy file, state folder). Not secret.
- `app-signing-ed25519.pub`: the coordinator's app-signing key. The node runs only app bundles signed
  with it (and, if the site policy lists `allowed-apps`, only those). Not secret.
- `README.md`: this file.

## Keep the private key secret

- `{site}.key` must stay readable only by the account that runs the node (mode 0600, `chmod 600 {site}.key`).
- Do not email it, copy it to shared drives or put it in backups that other people can read.
- If it is lost or may have been seen by someone else, tell the coordinator: they remove this key from the
  federation and send you a new kit.
- Before first use, check with the coordinator (by phone, not email) that the key fingerprint is
  `{fingerprint}`.

## Starting the node

```
fedward site start --kit DIR --data DIR
```

`--kit` is this folder; `--data` is the folder with the site's data. The other settings are in
`node-config.toml` (edit `policy-file` and `state-dir` if the defaults do not suit this machine).

## Network

- Only **outbound HTTPS to the coordinator at `{address}` (TCP port {port})** is needed.
- No inbound port has to be opened. The node also listens on 127.0.0.1 (this machine only, port 9094)
  for its own worker processes.

## Validity

The certificate authority in `ca.crt` is valid until **{_day(ca_expires)}**. The coordinator will send a new
`ca.crt` before then. The site key does not expire; it stays valid until the coordinator removes it.
"""


# ----------------------------------------------------------------------------- provisioning


def provision(
    out: Path,
    sites: list[str],
    *,
    sans: list[str] | None = None,
    ca_days: int = 3650,
    server_days: int = 825,
    force: bool = False,
    name: str | None = None,
    port: int = SUPERLINK_PORT,
    include_loopback: bool = True,
) -> Federation:
    """Create the federation folder `out`: CA, SuperLink certificate, Flower CLI profile and site kits.

    `sans` are the SuperLink's DNS names and IP addresses (the first one goes into the CLI profile's address);
    `name` (default: the folder's name) names the `[superlink.<name>]` profile. Existing private keys are
    never replaced unless `force`; in that case nothing is written. With `include_loopback` (default)
    localhost and 127.0.0.1 are added to the SANs when missing: in Flower 1.42 the SuperLink's own
    SuperExec connects to `<--host>:<--port>` (0.0.0.0 becomes 127.0.0.1) and checks this certificate.
    """
    site_names = validate_sites(sites)
    san_values = list(DEFAULT_SANS if sans is None else sans)
    if include_loopback and san_values:
        san_values += [s for s in DEFAULT_SANS if s not in san_values]
    general_names = _parse_sans(san_values)
    if not (isinstance(ca_days, int) and isinstance(server_days, int)) or ca_days < 1 or server_days < 1:
        raise ConfigError(
            f"certificate lifetimes must be positive days, got ca={ca_days} server={server_days}"
        )
    if server_days > ca_days:
        raise ConfigError(f"server certificate ({server_days} days) cannot outlive the CA ({ca_days} days)")
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port}: expected 1-65535")
    root = Path(out).expanduser().resolve()
    fed_name = validate_name(name if name is not None else root.name, "federation name (folder name)")

    coordinator = root / "coordinator"
    pub_dir = coordinator / "site-public-keys"
    kit_dirs = {s: root / "sites" / s for s in site_names}
    private_paths = [coordinator / "ca.key", coordinator / "superlink.key", coordinator / PROVENANCE_KEY]
    private_paths.append(coordinator / APP_SIGNING_KEY)
    private_paths.append(coordinator / OPERATOR_KEY)
    private_paths += [kit_dirs[s] / f"{s}.key" for s in site_names]
    existing = [p for p in private_paths if p.exists() or p.is_symlink()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise ConfigError(f"private key(s) already exist: {listed}; pass --force to replace them")

    if root.exists():  # the operator's own folder: only take away write access for other accounts
        root.chmod(stat.S_IMODE(root.stat().st_mode) & ~0o022)
    else:
        _make_dir(root, SHARED_DIR_MODE)
    _make_dir(root / "sites", SHARED_DIR_MODE)
    for folder in (coordinator, pub_dir, *kit_dirs.values()):
        _make_dir(folder, PRIVATE_DIR_MODE)

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca_key = _new_key()
    ca = _make_ca(fed_name, ca_key, now, ca_days)
    server_key = _new_key()
    server = _make_server_cert(ca, ca_key, server_key, general_names, now, server_days)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)

    ca_cert_path = coordinator / "ca.crt"
    _write_private(coordinator / "ca.key", _pem_key(ca_key), force=force)
    _write_public(ca_cert_path, ca_pem)
    _write_private(coordinator / "superlink.key", _pem_key(server_key), force=force)
    _write_public(coordinator / "superlink.crt", server.public_bytes(serialization.Encoding.PEM))
    provenance_key = write_provenance_key(coordinator, force=force)
    app_signing_key = write_app_signing_key(coordinator, force=force)
    app_public = (coordinator / APP_PUBLIC_KEY).read_bytes()
    operator_key = _new_key()
    operator = _make_operator_cert(ca, ca_key, operator_key, now, server_days)
    _write_private(coordinator / OPERATOR_KEY, _pem_key(operator_key), force=force)
    _write_public(coordinator / OPERATOR_CERT, operator.public_bytes(serialization.Encoding.PEM))

    address = _host_port(san_values[0].strip().rstrip("."), port)
    flwr_config = coordinator / "flwr-config.toml"
    profile = _flwr_config(fed_name, address, ca_cert_path, ca.not_valid_after_utc, site_names)
    _write_public(flwr_config, profile)

    kits: dict[str, SiteKit] = {}
    public_keys: dict[str, Path] = {}
    for site in site_names:
        kit = kit_dirs[site]
        private, public = _site_keys(site, fed_name)
        _write_private(kit / f"{site}.key", private, force=force)
        _write_public(kit / f"{site}.pub", public)
        _write_public(pub_dir / f"{site}.pub", public)
        _write_public(kit / "ca.crt", ca_pem)
        _write_public(kit / APP_PUBLIC_KEY, app_public)
        _write_public(kit / "node-config.toml", node_config_template(site))
        readme = _readme(site, fed_name, address, ssh_fingerprint(public), ca.not_valid_after_utc, port)
        _write_public(kit / "README.md", readme)
        public_keys[site] = pub_dir / f"{site}.pub"
        kits[site] = _kit_paths(site, kit)

    return Federation(
        name=fed_name,
        address=address,
        root=root,
        coordinator=coordinator,
        ca_cert=ca_cert_path,
        ca_key=coordinator / "ca.key",
        server_cert=coordinator / "superlink.crt",
        server_key=coordinator / "superlink.key",
        flwr_config=flwr_config,
        site_public_keys=public_keys,
        sites=kits,
        ca_expires=ca.not_valid_after_utc,
        server_expires=server.not_valid_after_utc,
        sans=tuple(san_values),
        provenance_key=provenance_key,
        app_signing_key=app_signing_key,
        operator_cert=coordinator / OPERATOR_CERT,
        operator_key=coordinator / OPERATOR_KEY,
    )


def rotate_site_key(root: Path, site: str, federation: str) -> Path:
    """Give `site` a fresh SuperNode key pair: `sites/<site>/<site>.key` (0600) and `.pub`, and
    `coordinator/site-public-keys/<site>.pub`; the kit's README.md gets the new fingerprint. Returns the
    new private key, which has to reach the site (its old key stays unusable at the SuperLink)."""
    site = validate_name(site, "site name")
    kit = Path(root) / "sites" / site
    coordinator = Path(root) / "coordinator"
    if not kit.is_dir():
        _make_dir(kit, PRIVATE_DIR_MODE)
    old_public = kit / f"{site}.pub"
    old_fingerprint = ssh_fingerprint(old_public.read_text()) if old_public.is_file() else None
    private, public = _site_keys(site, federation)
    _write_private(kit / f"{site}.key", private, force=True)
    _write_public(old_public, public)
    _write_public(coordinator / "site-public-keys" / f"{site}.pub", public)
    if not (kit / "ca.crt").exists():
        _write_public(kit / "ca.crt", (coordinator / "ca.crt").read_bytes())
    if not (kit / "node-config.toml").exists():
        _write_public(kit / "node-config.toml", node_config_template(site))
    if (coordinator / APP_PUBLIC_KEY).is_file() and not (kit / APP_PUBLIC_KEY).exists():
        _write_public(kit / APP_PUBLIC_KEY, (coordinator / APP_PUBLIC_KEY).read_bytes())
    readme = kit / "README.md"
    if old_fingerprint and readme.is_file():
        _write_public(readme, readme.read_text().replace(old_fingerprint, ssh_fingerprint(public)))
    return kit / f"{site}.key"


def _kit_paths(site: str, kit: Path) -> SiteKit:
    return SiteKit(
        site=site,
        dir=kit,
        ca_cert=kit / "ca.crt",
        private_key=kit / f"{site}.key",
        public_key=kit / f"{site}.pub",
        node_config=kit / "node-config.toml",
        readme=kit / "README.md",
        app_key=kit / APP_PUBLIC_KEY,
    )


# ----------------------------------------------------------------------------- loading a kit


def load_site_kit(kit_dir: Path) -> SiteKit:
    """Check a site kit has what the node needs and that it is usable; raise ConfigError naming the file.

    README.md may be missing. The site name comes from `site-id` in node-config.toml, so the folder
    itself can be renamed.
    """
    kit = Path(kit_dir).expanduser().resolve()
    if not kit.is_dir():
        raise ConfigError(f"{kit}: site kit folder not found")
    node_config = kit / "node-config.toml"
    if not node_config.is_file():
        raise ConfigError(f"{node_config}: missing from the site kit")
    values = read_toml(node_config, "site kit node config")
    missing_keys = [k for k in NODE_CONFIG_KEYS if k not in values]
    if missing_keys:
        raise ConfigError(f"{node_config}: missing key(s) {', '.join(missing_keys)}")
    site = validate_name(str(values["site-id"]), f"{node_config}: site-id")

    paths = _kit_paths(site, kit)
    for path in (paths.ca_cert, paths.private_key, paths.public_key, paths.app_key):  # README: people only
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the site kit")

    try:
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise ConfigError(f"{paths.ca_cert}: not a CA certificate in PEM format ({exc})") from exc
    if not is_ca:
        raise ConfigError(f"{paths.ca_cert}: not a CA certificate (basic constraints CA=false)")

    mode = stat.S_IMODE(paths.private_key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{paths.private_key}: readable by other accounts (mode {mode:04o}); run `chmod 600` on it"
        )
    try:
        key = serialization.load_ssh_private_key(paths.private_key.read_bytes(), password=None)
        public = serialization.load_ssh_public_key(paths.public_key.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{kit}: site key files cannot be read as OpenSSH keys ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ConfigError(f"{paths.private_key}: expected an EC P-384 (ecdsa-sha2-nistp384) key")
    if key.public_key() != public:
        raise ConfigError(f"{paths.public_key}: does not match {paths.private_key.name}")
    load_public_key(paths.app_key)  # the site refuses app bundles not signed with it
    return paths
