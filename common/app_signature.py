"""Signing a Flower App Bundle (FAB) at the coordinator and verifying it at a site.

A FAB is a zip that Flower builds from the app folder (`flwr.cli.build.build_fab_from_disk`); its own
hash (sha256 of the zip) cannot be signed from inside it, so the signature covers the sha256 of every
file in the bundle except itself and Flower's `.info/CONTENT`. It travels inside the FAB as
`fedward-app-signature.json` (a file type a FAB may carry):

    {"signed": {"format": "fedward-app-signature/1", "publisher": ..., "name": ..., "version": ...,
                "files": {"<path>": "<sha256>", ...}, "digest": "<sha256 of the files map>",
                "signed-at": "<UTC ISO time>"},
     "signature": "<base64 Ed25519 over the canonical JSON of `signed`>"}

`digest` names the app's content whatever the signing time (a site policy may allow-list it).
Verification refuses a bundle without a signature, with a signature by another key, with any file
added, removed or changed after signing, or one the site's allow-list does not name.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedward.common.ed25519_keys import read_private_key, read_public_key
from fedward.common.errors import ConfigError, FedwardError
from fedward.common.tomlfile import read_toml

SIGNATURE_FILE = "fedward-app-signature.json"
"""The signature's path inside the FAB (top level)."""
FORMAT = "fedward-app-signature/1"
CONTENT_MANIFEST = ".info/CONTENT"
"""Flower's own file list inside a FAB (not signed: it is derived from the files)."""
APP_SIGNING_KEY = "app-signing-ed25519.key"
"""The coordinator's Ed25519 key that signs app bundles; public half: `app-signing-ed25519.pub`."""
APP_PUBLIC_KEY = "app-signing-ed25519.pub"
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
"""Largest total of file sizes a FAB may unpack to (Flower caps the zip itself at 10 MB)."""


class AppRefused(FedwardError):
    """A site refuses an app bundle; `code` is a short reason code, the message says why (no paths)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AppIdentity:
    """What a verified bundle is: its name, version, content digest and (when known) FAB hash."""

    publisher: str
    name: str
    version: str
    digest: str
    fab_hash: str

    def __str__(self) -> str:
        return f"{self.publisher}/{self.name} {self.version} (sha256:{self.digest[:16]}...)"


@dataclass(frozen=True)
class SignedApp:
    """A signed copy of an app folder, ready for `flwr run <dir>`."""

    dir: Path
    identity: AppIdentity


# ----------------------------------------------------------------------------- keys


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The coordinator's app-signing key (Ed25519 PEM, owner-only); ConfigError naming the file otherwise."""
    return read_private_key(path, "app-signing key not found (made by `fedward provision`)")


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The app-signing public key of a site kit (PEM); ConfigError naming the file otherwise."""
    return read_public_key(path, "the kit has no app-signing key; ask the coordinator for a current kit")


def public_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of a signing key."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ----------------------------------------------------------------------------- digests


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def files_digest(files: dict[str, str]) -> str:
    """sha256 of the canonical JSON of a {path: sha256} map: the app's content digest."""
    return hashlib.sha256(_canonical(files)).hexdigest()


def _open_fab(content: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as exc:
        raise AppRefused("malformed", f"the app bundle is not a zip archive ({exc})") from exc
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise AppRefused("malformed", "the app bundle holds the same file name twice")
    if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
        raise AppRefused("malformed", f"the app bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    return archive


def fab_file_digests(content: bytes) -> dict[str, str]:
    """{path: sha256} of every file in a FAB except the signature and Flower's CONTENT list."""
    with _open_fab(content) as archive:
        return {
            info.filename: hashlib.sha256(archive.read(info)).hexdigest()
            for info in archive.infolist()
            if info.filename not in (SIGNATURE_FILE, CONTENT_MANIFEST)
        }


def _app_metadata(pyproject: Path) -> tuple[str, str, str]:
    config = read_toml(pyproject, "app")
    project = config["project"]
    return str(config["tool"]["flwr"]["app"]["publisher"]), str(project["name"]), str(project["version"])


# ----------------------------------------------------------------------------- signing


def sign_app(app: Path, key: ed25519.Ed25519PrivateKey, staging: Path) -> SignedApp:
    """Copy what Flower would bundle from `app` into `staging/<app folder name>/`, add the signature
    file, and return that folder: `flwr run` of it ships exactly the signed files plus the signature.

    The copy is built with Flower's own FAB builder (its include/exclude rules and pyproject.toml
    rendering), so the bundle `flwr run` makes from it again has the same files byte for byte.
    """
    from flwr.cli.build import build_fab_from_disk  # the coordinator's side only

    source = Path(app).expanduser().resolve()
    target = Path(staging) / source.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        first = build_fab_from_disk(source)
    except ValueError as exc:
        raise ConfigError(f"{source}: Flower cannot bundle this app ({exc})") from exc
    with _open_fab(first) as archive:
        for info in archive.infolist():
            if info.filename in (SIGNATURE_FILE, CONTENT_MANIFEST) or info.filename.startswith(".info/"):
                continue
            path = target / info.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))
    again = build_fab_from_disk(target)  # exactly what `flwr run` will bundle, less the signature
    files = fab_file_digests(again)
    publisher, name, version = _app_metadata(target / "pyproject.toml")
    signed = {
        "format": FORMAT,
        "publisher": publisher,
        "name": name,
        "version": version,
        "files": files,
        "digest": files_digest(files),
        "signed-at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    document = {"signed": signed, "signature": base64.b64encode(key.sign(_canonical(signed))).decode()}
    (target / SIGNATURE_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    identity = AppIdentity(publisher, name, version, signed["digest"], fab_hash="")
    return SignedApp(dir=target, identity=identity)


# ----------------------------------------------------------------------------- verifying


def verify_fab(
    content: bytes,
    public_key: ed25519.Ed25519PublicKey,
    *,
    allowed: Sequence[str] | None = None,
) -> AppIdentity:
    """Check a FAB's signature and files against `public_key` and the optional allow-list.

    Returns what the bundle is; raises AppRefused (code: unsigned, malformed, bad-signature, tampered,
    not-allowed) with a message that names files of the bundle but nothing of the site.
    """
    fab_hash = hashlib.sha256(content).hexdigest()
    with _open_fab(content) as archive:
        if SIGNATURE_FILE not in archive.namelist():
            raise AppRefused("unsigned", f"the app bundle carries no {SIGNATURE_FILE}")
        raw = archive.read(SIGNATURE_FILE)
    try:
        document = json.loads(raw)
        signed = document["signed"]
        signature = base64.b64decode(document["signature"], validate=True)
        if not isinstance(signed, dict) or signed.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        raise AppRefused("malformed", f"{SIGNATURE_FILE} cannot be read ({exc})") from exc
    try:
        public_key.verify(signature, _canonical(signed))
    except InvalidSignature:
        raise AppRefused(
            "bad-signature", "the app bundle is not signed by this federation's app-signing key"
        ) from None
    expected = signed.get("files")
    if not isinstance(expected, dict) or signed.get("digest") != files_digest(expected):
        raise AppRefused("malformed", f"{SIGNATURE_FILE}: the file list does not match its digest")
    actual = fab_file_digests(content)
    changed = sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p])
    added = sorted(actual.keys() - expected.keys())
    removed = sorted(expected.keys() - actual.keys())
    if changed or added or removed:
        parts = [
            f"{what}: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}"
            for what, paths in (("changed", changed), ("added", added), ("removed", removed))
            if paths
        ]
        raise AppRefused("tampered", "the app bundle differs from what was signed (" + "; ".join(parts) + ")")
    identity = AppIdentity(
        publisher=str(signed.get("publisher")),
        name=str(signed.get("name")),
        version=str(signed.get("version")),
        digest=str(signed["digest"]),
        fab_hash=fab_hash,
    )
    if allowed is not None and not _allowed(identity, allowed):
        raise AppRefused(
            "not-allowed",
            f"app {identity.name} {identity.version} (sha256:{identity.digest}) is not in the site's "
            "allowed-apps",
        )
    return identity


def _allowed(identity: AppIdentity, allowed: Sequence[str]) -> bool:
    names = {
        f"{identity.name}=={identity.version}",
        f"sha256:{identity.digest}",
        f"sha256:{identity.fab_hash}",
    }
    return any(entry in names for entry in allowed)
