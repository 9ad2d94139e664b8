"""The signed provenance manifest of a run: `provenance.json` + `provenance.sig`, and checking them.

The manifest records what made the final model (software, git commit, run config, strategy, which sites
took part in each round, ε per site, data-set fingerprints (hashes, never data), final metrics) and the
sha256 of every artifact of the run directory. `provenance.sig` is the base64 Ed25519 signature over the
manifest's canonical JSON bytes: `json.dumps(manifest, sort_keys=True, separators=(",", ":"))`.
`provenance.json` holds the same object indented by 2 (sorted keys, trailing newline); any other
rendering of the file counts as an edit. The round checkpoint (`checkpoint.json`, its arrays file) is an
artifact too; verifying also checks the checkpoint's own signature with the manifest's key, and refuses a
checkpoint file the manifest does not list or a pickle `checkpoint.pt`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedward.common.errors import ConfigError
from fedward.server.checkpoint_store import checkpoint_files, checkpoint_problems, legacy_problem
from fedward.server.provenance.signing import (
    key_fingerprint,
    load_private_key,
    load_public_key,
    public_key_from_text,
    public_key_text,
    sign,
    signature_valid,
)
from fedward.server.provenance.software import software
from fedward.server.rundir import CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, RunDirectory, json_safe

FORMAT = "fedward-provenance/1"
MANIFEST_FILE = "provenance.json"
SIGNATURE_FILE = "provenance.sig"
WEIGHT_FILES = ("model.safetensors", "model.pt")
CARD_FILE = "MODEL_CARD.md"
RECORD_FILES = (CONFIG_FILE, SUMMARY_FILE)  # ROUNDS_FILE is absent only when the run ended before round 1
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass
class VerifyResult:
    """The outcome of `verify_run`: every problem found (empty when the run checks) and warnings."""

    run_dir: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    signer: str | None = None
    artifacts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the signature and every listed artifact check."""
        return not self.problems


# ----------------------------------------------------------------------------- JSON forms


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The signed bytes: sorted keys, no whitespace, ASCII."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def rendered(manifest: dict[str, Any]) -> str:
    """The text of `provenance.json`."""
    return json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False) + "\n"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading the run


def sites_per_round(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: sites that trained, whose update was aggregated, that evaluated, and failures."""
    rounds = []
    for record in records:
        sites = record.get("sites") or {}
        trained = sorted(s for s, v in sites.items() if (v or {}).get("train"))
        rejected = set(record.get("rejected") or {})
        rounds.append(
            {
                "round": record.get("round"),
                "trained": trained,
                "aggregated": [s for s in trained if s not in rejected],
                "evaluated": sorted(s for s, v in sites.items() if (v or {}).get("evaluate")),
                "failures": list(record.get("failures") or []),
            }
        )
    return rounds


def data_fingerprints(config: dict[str, Any]) -> dict[str, str | None]:
    """Each site's data-set fingerprint (sha256 hex) from config.json, None where none was reported."""
    out: dict[str, str | None] = {}
    for site, report in sorted((config.get("sites") or {}).items()):
        value = (report or {}).get("fingerprint")
        out[site] = value if isinstance(value, str) and _FINGERPRINT.fullmatch(value) else None
    return out


def _privacy(run_config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("epsilon", "delta", "epsilon-lifetime", "epsilon-cap", "privacy-steps")
    return {
        "dp": summary.get("dp", run_config.get("dp")),
        "accountant": run_config.get("dp-accountant"),
        "target-epsilon": run_config.get("dp-target-epsilon"),
        "max-grad-norm": run_config.get("dp-max-grad-norm"),
        "central-dp": summary.get("central-dp"),
        "sites": {
            site: {k: (entry or {}).get(k) for k in keys}
            for site, entry in sorted((summary.get("sites") or {}).items())
        },
    }


def artifact_hashes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of the run's weights, model card, records and round checkpoint; ConfigError when
    the weights, config.json or summary.json are missing."""
    weights = [n for n in WEIGHT_FILES if (run_dir / n).is_file()]
    if not weights:
        raise ConfigError(f"{run_dir}: no model weights ({' or '.join(WEIGHT_FILES)})")
    optional = [n for n in (CARD_FILE, ROUNDS_FILE) if (run_dir / n).is_file()]
    names = [*weights, *optional, *RECORD_FILES, *checkpoint_files(run_dir)]
    out = {}
    for name in names:
        path = run_dir / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the run directory")
        out[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def build_manifest(run_dir: Path) -> dict[str, Any]:
    """The unsigned provenance manifest of a finished run directory (see the module docstring)."""
    folder = RunDirectory.existing(run_dir)
    run = folder.path
    config, summary = folder.read_json(CONFIG_FILE), folder.read_json(SUMMARY_FILE)
    records = folder.rounds() if folder.has(ROUNDS_FILE) else []
    run_config = config.get("run-config") or {}
    run_id = config.get("flower-run-id")
    manifest = {
        "format": FORMAT,
        "created-at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run-name": run.name,
        "flower-run-id": None if run_id is None else str(run_id),
        "run-uid": config.get("run-uid"),
        "software": software(),
        "task": summary.get("task", run_config.get("task")),
        "strategy": summary.get("strategy", run_config.get("strategy")),
        "model": run_config.get("model"),
        "rounds": {
            "planned": summary.get("rounds", run_config.get("num-server-rounds")),
            "completed": summary.get("rounds-completed"),
            "stopped": summary.get("stopped"),
            "resumed-after-round": summary.get("resumed-after-round"),
        },
        "run-config": run_config,
        "sites-per-round": sites_per_round(records),
        "privacy": _privacy(run_config, summary),
        "data-fingerprints": data_fingerprints(config),
        "metrics": {
            "overall": summary.get("overall") or {},
            "sites": {s: (e or {}).get("evaluate") for s, e in sorted((summary.get("sites") or {}).items())},
        },
        "artifacts": artifact_hashes(run),
    }
    return json_safe(manifest)


# ----------------------------------------------------------------------------- signing


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def sign_run(run_dir: Path, key_path: Path) -> Path:
    """Build, sign and write `<run>/provenance.json` and `<run>/provenance.sig`; returns the manifest path."""
    run = Path(run_dir).expanduser().resolve()
    key = load_private_key(key_path)
    manifest = build_manifest(run)
    public = key.public_key()
    manifest["signer"] = {
        "algorithm": "Ed25519",
        "public-key": public_key_text(public),
        "fingerprint": key_fingerprint(public),
    }
    signature = sign(key, canonical_bytes(manifest))
    target = run / MANIFEST_FILE
    _write_atomic(target, rendered(manifest).encode("ascii"))
    _write_atomic(run / SIGNATURE_FILE, base64.b64encode(signature) + b"\n")
    return target


# ----------------------------------------------------------------------------- verifying


def _load_manifest(run: Path, result: VerifyResult) -> tuple[dict[str, Any], str] | None:
    path = run / MANIFEST_FILE
    if not path.is_file():
        result.problems.append(f"{MANIFEST_FILE}: missing (sign the run with `fedward sign {run}`)")
        return None
    try:
        text = path.read_text(encoding="utf-8")
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.problems.append(f"{MANIFEST_FILE}: not valid JSON ({exc})")
        return None
    if not isinstance(manifest, dict):
        result.problems.append(f"{MANIFEST_FILE}: expected a JSON object")
        return None
    if manifest.get("format") != FORMAT:
        result.problems.append(f"{MANIFEST_FILE}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest, text


def _signature(run: Path, result: VerifyResult) -> bytes | None:
    path = run / SIGNATURE_FILE
    if not path.is_file():
        result.problems.append(f"{SIGNATURE_FILE}: missing")
        return None
    try:
        signature = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        result.problems.append(f"{SIGNATURE_FILE}: expected a base64 Ed25519 signature (64 bytes)")
        return None
    return signature


def _signer(
    manifest: dict[str, Any], expected: ed25519.Ed25519PublicKey | None, result: VerifyResult
) -> ed25519.Ed25519PublicKey | None:
    """The key to check the signature with: the expected one, else the one the manifest records."""
    signer = manifest.get("signer")
    recorded = None
    try:
        recorded = public_key_from_text(str(signer["public-key"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        result.problems.append(f"{MANIFEST_FILE}: signer.public-key is not a base64 Ed25519 public key")
    if expected is not None:
        result.signer = key_fingerprint(expected)
        if recorded is not None and recorded.public_bytes_raw() != expected.public_bytes_raw():
            result.problems.append(
                f"{MANIFEST_FILE}: signed by key {key_fingerprint(recorded)}, expected "
                f"{key_fingerprint(expected)} (--public-key)"
            )
        return expected
    if recorded is not None:
        result.signer = key_fingerprint(recorded)
        result.warnings.append(
            f"no --public-key given: the signature was checked against the key recorded in the manifest "
            f"({result.signer}) only; this shows the files are unchanged since signing, not who signed them"
        )
    return recorded


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _check_artifacts(run: Path, manifest: dict[str, Any], result: VerifyResult) -> None:
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts:
        result.problems.append(f"{MANIFEST_FILE}: lists no artifacts")
        return
    if not any(name in artifacts for name in WEIGHT_FILES):
        result.problems.append(f"{MANIFEST_FILE}: lists no model weights ({', '.join(WEIGHT_FILES)})")
    for name, entry in sorted(artifacts.items()):
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not _safe_name(name) or not isinstance(expected, str):
            result.problems.append(f"{MANIFEST_FILE}: artifact entry {name!r} is malformed")
            continue
        path = run / name
        if not path.is_file():
            result.problems.append(f"{name}: missing (listed in {MANIFEST_FILE})")
            continue
        found = sha256_file(path)
        if found != expected:
            result.problems.append(
                f"{name}: sha256 {found[:16]}... differs from the manifest's {expected[:16]}... "
                "(file changed after signing)"
            )
        else:
            result.artifacts.append(name)
    unlisted = [n for n in checkpoint_files(run) if n not in artifacts]
    if unlisted:
        result.problems.append(
            f"{', '.join(unlisted)}: checkpoint file(s) not in {MANIFEST_FILE} (added after signing)"
        )
    if problem := legacy_problem(run):
        result.problems.append(problem)


def _check_checkpoint(run: Path, key: ed25519.Ed25519PublicKey | None, result: VerifyResult) -> None:
    """The round checkpoint's own signature (the run's key signs it too) and its arrays' sha256."""
    if key is not None and checkpoint_files(run):
        result.problems.extend(checkpoint_problems(run, key))


def verify_run(run_dir: Path, public_key: Path | ed25519.Ed25519PublicKey | None = None) -> VerifyResult:
    """Check `provenance.sig` against `provenance.json` and every listed artifact's sha256.

    `public_key` (a PEM `.pub` path or a key) is the key the run must be signed with; without it the
    signature is checked against the key the manifest records, and a warning says so.
    """
    run = Path(run_dir).expanduser().resolve()
    result = VerifyResult(run_dir=run)
    if not run.is_dir():
        result.problems.append(f"{run}: run directory not found")
        return result
    expected = load_public_key(public_key) if isinstance(public_key, str | Path) else public_key
    loaded = _load_manifest(run, result)
    if loaded is None:
        return result
    manifest, text = loaded
    key = _signer(manifest, expected, result)
    signature = _signature(run, result)
    if key is not None and signature is not None:
        try:
            payload = canonical_bytes(manifest)
        except ValueError:
            payload = b""
        if not signature_valid(key, signature, payload):
            result.problems.append(
                f"{SIGNATURE_FILE}: signature does not match {MANIFEST_FILE} (manifest changed after "
                "signing, or signed by another key)"
            )
        elif text != rendered(manifest):
            result.problems.append(f"{MANIFEST_FILE}: the file differs from its signed rendering (edited)")
    _check_artifacts(run, manifest, result)
    _check_checkpoint(run, key, result)
    return result
