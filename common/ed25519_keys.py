"""Reading the federation's Ed25519 PEM keys (provenance signing, app signing): one place for the checks."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedward.common.errors import ConfigError


def read_private_key(path: Path, missing: str) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 PEM private key that only its owner can read; ConfigError naming the file (`missing`
    says what to do when it is not there)."""
    path = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key ({exc.strerror})") from exc
    if mode & 0o077:
        raise ConfigError(f"{path}: readable by other accounts (mode {mode:04o}); run `chmod 600` on it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def read_public_key(path: Path, missing: str) -> ed25519.Ed25519PublicKey:
    """An Ed25519 PEM public key; ConfigError naming the file (`missing`: what to do without it)."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the public key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc}); give the `.pub` file") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key
