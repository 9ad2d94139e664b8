"""The coordinator's Ed25519 provenance key: where it comes from, loading it, signing and checking bytes.

Which key signs a run (first match wins):

1. an explicit path (`fedward sign --key`, the `signing-key` the coordinator passes),
2. the environment variable `FEDWARD_SIGNING_KEY`,
3. a per-user key `~/.fedward/provenance-ed25519.key`, made on first use (simulations have no federation
   folder; a provisioned federation has `coordinator/provenance-ed25519.key`).

Keys are PEM (PKCS8 private, SubjectPublicKeyInfo public) and the private key must have mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedward.common.ed25519_keys import read_private_key, read_public_key
from fedward.common.errors import ConfigError
from fedward.server.deployment.provision import PROVENANCE_KEY, write_provenance_key

SIGNING_KEY_ENV = "FEDWARD_SIGNING_KEY"


def default_signing_key() -> Path:
    """The per-user key used when none is given: `~/.fedward/provenance-ed25519.key`."""
    return Path.home() / ".fedward" / PROVENANCE_KEY


def resolve_signing_key(explicit: Path | str | None = None) -> Path:
    """The key that signs: `explicit`, else `$FEDWARD_SIGNING_KEY`, else the per-user key (made if missing).

    An explicit or environment key must exist; the per-user key is created (folder 0700, key 0600).
    """
    for given, origin in ((explicit, "signing key"), (os.environ.get(SIGNING_KEY_ENV), SIGNING_KEY_ENV)):
        if given:
            path = Path(given).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{origin} {path}: file not found (expected an Ed25519 PEM private key)")
            return path
    path = default_signing_key()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            write_provenance_key(path.parent)
        except ConfigError:
            if not path.is_file():  # not a concurrent run that made it first
                raise
    return path


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read the provenance signing key (Ed25519 PEM, owner-only); ConfigError naming the file."""
    return read_private_key(path, "signing key not found (made by `fedward provision`)")


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Read an Ed25519 PEM public key (`provenance-ed25519.pub`); ConfigError naming the file."""
    return read_public_key(path, "public key not found")


def public_key_text(key: ed25519.Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def public_key_from_text(text: str) -> ed25519.Ed25519PublicKey:
    """Inverse of `public_key_text`; ValueError when it is not a base64 Ed25519 public key."""
    raw = base64.b64decode(text, validate=True)
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def key_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    """`sha256:<hex>` of the raw public key: short enough to compare by phone."""
    return "sha256:" + hashlib.sha256(key.public_bytes_raw()).hexdigest()


def sign(key: ed25519.Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature of `payload` (64 bytes)."""
    return key.sign(payload)


def signature_valid(key: ed25519.Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """Whether `signature` is `key`'s signature of `payload`."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True
