"""The files of a round checkpoint in a run directory: writing them signed, and reading them back verified.

    checkpoint.json                     round, run uid, the JSON state (server/checkpoint_codec.py), the
                                        name and sha256 of the arrays file, and an Ed25519 signature
    checkpoint-round-NNNN.safetensors   every array (global model, strategy moments, control variates,
                                        torch's RNG state...)

The signature (base64, field `signature`) covers the canonical JSON bytes of every other field
(`json.dumps(doc, separators=(",", ":"), ensure_ascii=True)`, key order as in the file) and is made with
the federation's provenance key (server/provenance/signing.py), the key that signs the run's manifest. Reading
checks the signature, the run directory's name and the arrays' sha256 before anything is decoded; only
`json` and `safetensors` parse the files, nothing is unpickled. `checkpoint.json` is replaced last and
atomically, so a crash mid-write leaves the previous checkpoint whole; arrays files of older rounds are
removed after it. A `checkpoint.pt` (the pickle checkpoint of fedward before format 2) is refused, never
loaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedward.server.checkpoint_codec import CheckpointError
from fedward.server.provenance.signing import key_fingerprint, sign, signature_valid

FORMAT = "fedward-checkpoint/2"
CHECKPOINT_JSON = "checkpoint.json"
LEGACY_CHECKPOINT = "checkpoint.pt"
ARRAYS_FILE = re.compile(r"checkpoint-round-\d{4,}\.safetensors")


def arrays_file_name(server_round: int) -> str:
    """`checkpoint-round-NNNN.safetensors`."""
    return f"checkpoint-round-{server_round:04d}.safetensors"


def checkpoint_files(run_dir: Path) -> list[str]:
    """Names of the checkpoint files present in `run_dir` (for the provenance manifest)."""
    run = Path(run_dir)
    names = sorted(
        p.name for p in run.glob("checkpoint-round-*.safetensors") if ARRAYS_FILE.fullmatch(p.name)
    )
    return ([CHECKPOINT_JSON] if (run / CHECKPOINT_JSON).is_file() else []) + names


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The signed bytes of a checkpoint document (without its `signature`)."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_checkpoint(
    run_dir: Path,
    server_round: int,
    state: dict[str, Any],
    arrays: dict[str, np.ndarray],
    key: ed25519.Ed25519PrivateKey,
) -> Path:
    """Write the arrays file, then the signed `checkpoint.json` (atomically); returns the JSON's path."""
    run = Path(run_dir)
    data = save_arrays(arrays)
    arrays_name = arrays_file_name(server_round)
    _write_atomic(run / arrays_name, data)
    document = {
        "format": FORMAT,
        "run-name": run.resolve().name,
        "round": server_round,
        "arrays-file": arrays_name,
        "arrays-sha256": hashlib.sha256(data).hexdigest(),
        "state": state,
        "signer": key_fingerprint(key.public_key()),
    }
    document["signature"] = base64.b64encode(sign(key, canonical_bytes(document))).decode("ascii")
    target = run / CHECKPOINT_JSON
    _write_atomic(target, json.dumps(document, indent=1, ensure_ascii=True, allow_nan=False).encode("ascii"))
    for stale in checkpoint_files(run)[1:]:
        if stale != arrays_name:
            (run / stale).unlink(missing_ok=True)
    (run / LEGACY_CHECKPOINT).unlink(missing_ok=True)  # superseded; it would only block a resume
    return target


def legacy_problem(run_dir: Path) -> str | None:
    """Why a `checkpoint.pt` in `run_dir` blocks resuming, or None."""
    path = Path(run_dir) / LEGACY_CHECKPOINT
    if not (path.exists() or path.is_symlink()):
        return None
    return (
        f"{path}: a pickle checkpoint (fedward before {FORMAT}); it is no longer loaded and cannot be "
        f"migrated: remove it and start the run again (signed checkpoints are {CHECKPOINT_JSON} + "
        "checkpoint-round-NNNN.safetensors)"
    )


def _signed_document(path: Path, public_key: ed25519.Ed25519PublicKey) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON checkpoint ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("signature"), str):
        raise CheckpointError(f"{path}: expected a JSON object with a `signature` (base64 Ed25519)")
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        payload = canonical_bytes(document)
    except (binascii.Error, ValueError):
        signature, payload = b"", b""
    if not signature_valid(public_key, signature, payload):
        raise CheckpointError(
            f"{path}: signature does not verify with the federation's key {key_fingerprint(public_key)} "
            "(the checkpoint was edited, or written by another key); refusing to resume from it"
        )
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
    return document


def read_checkpoint(
    run_dir: Path, public_key: ed25519.Ed25519PublicKey
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The verified document and arrays of the run's checkpoint; None when no round completed yet.

    CheckpointError when a legacy `checkpoint.pt` is present, or the signature, run name or arrays
    sha256 do not check; nothing is decoded before they do."""
    run = Path(run_dir).resolve()
    if problem := legacy_problem(run):
        raise CheckpointError(problem)
    return _verified(run, public_key)


def _verified(
    run: Path, public_key: ed25519.Ed25519PublicKey
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    path = run / CHECKPOINT_JSON
    if not path.is_file():  # an arrays file alone is a first write that never committed
        return None
    document = _signed_document(path, public_key)
    if document.get("run-name") != run.name:
        raise CheckpointError(
            f"{path}: written for run {document.get('run-name')!r}, this run directory is {run.name!r}"
        )
    name = document.get("arrays-file")
    if not isinstance(name, str) or not ARRAYS_FILE.fullmatch(name):
        raise CheckpointError(f"{path}: arrays-file {name!r} is not checkpoint-round-NNNN.safetensors")
    try:
        data = (run / name).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{run / name}: cannot read the checkpoint's arrays ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != document.get("arrays-sha256"):
        raise CheckpointError(
            f"{run / name}: sha256 differs from the signed {CHECKPOINT_JSON} (file changed or swapped)"
        )
    try:
        arrays = load_arrays(data)
    except SafetensorError as exc:  # signed bytes that do not parse: written by a broken fedward
        raise CheckpointError(f"{run / name}: not a safetensors file ({exc})") from exc
    return document, arrays


def checkpoint_problems(run_dir: Path, public_key: ed25519.Ed25519PublicKey) -> list[str]:
    """What is wrong with the run's checkpoint files (for `fedward verify`; a `checkpoint.pt` is
    `legacy_problem`'s); empty when there are none or they check."""
    try:
        _verified(Path(run_dir).resolve(), public_key)
    except CheckpointError as exc:
        return [str(exc)]
    return []
