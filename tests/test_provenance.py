"""Signed provenance, safetensors export and the model card of a run directory; `fedward verify`."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedward.cli import app
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import get_task
from fedward.server.deployment.provision import PROVENANCE_KEY, provision, write_provenance_key
from fedward.server.export import finalise_run, load_exported
from fedward.server.provenance.manifest import build_manifest, verify_run
from fedward.server.provenance.signing import SIGNING_KEY_ENV, load_private_key, resolve_signing_key
from fedward.server.provenance.software import SOURCE_ROOT, git_state
from fedward.server.report.model_card import class_counts, model_card
from fedward.server.rundir import RunDirectory

SITES = {"st-marys": 1.2345, "royal-free": 2.4681}
FINGERPRINT = "ab" * 32
ARTIFACTS = ("model.safetensors", "model.pt", "MODEL_CARD.md", "config.json", "summary.json", "metrics.jsonl")


def _evaluate(tp: int, fn: int, tn: int, fp: int) -> dict:
    n = tp + fn + tn + fp
    return {
        "accuracy": (tp + tn) / n,
        "roc-auc": 0.9,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "num-examples": n,
    }


def make_run(root: Path, task: str = "ckd", data_root: str = "") -> Path:
    """A finished run directory written by hand: config.json, metrics.jsonl, summary.json and model.pt."""
    run = RunDirectory(root / "runs" / "unit-run")
    config = RunConfig(task="ckd", num_server_rounds=2, data_root=data_root)
    torch.manual_seed(0)
    run.save_model(get_task("ckd").build_model(config).state_dict())
    reports = {
        "st-marys": {"rows-read": 120.0, "num-train": 96, "num-test": 24, "fingerprint": FINGERPRINT},
        "royal-free": {"rows-read": 80.0, "num-train": 64, "num-test": 16, "fingerprint": "not a hash"},
    }
    run_config = {**config.to_flower(), "task": task}
    run.write_json("config.json", {"run-config": run_config, "sites": reports, "flower-run-id": 2**64 - 5})
    evaluate = {"st-marys": _evaluate(15, 3, 5, 1), "royal-free": _evaluate(3, 1, 11, 1)}
    train = {s: {"epsilon": e, "delta": 1e-3, "num-examples": 10} for s, e in SITES.items()}
    run.append_round(
        {
            "round": 1,
            "sites": {s: {"train": train[s], "evaluate": evaluate[s]} for s in SITES},
            "rejected": {"royal-free": "norm 99 above 10"},
            "failures": [],
        }
    )
    run.append_round(
        {
            "round": 2,
            "sites": {"st-marys": {"train": train["st-marys"], "evaluate": evaluate["st-marys"]}},
            "rejected": {},
            "failures": ["royal-free: refused: budget"],
        }
    )
    sites = {
        s: {
            "evaluate": evaluate[s],
            "epsilon": e,
            "delta": 1e-3,
            "privacy-steps": 20,
            "data": reports[s],
            "refused": None,
            "updates-rejected": 0,
        }
        for s, e in SITES.items()
    }
    summary = {
        "task": task,
        "strategy": "fedavg",
        "rounds": 2,
        "rounds-completed": 2,
        "dp": True,
        "stopped": None,
        "central-dp": None,
        "overall": {"accuracy": 0.85, "num-examples": 40.0},
        "sites": sites,
    }
    run.write_json("summary.json", summary)
    return run.path


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    """A coordinator signing key (and its .pub) in a folder of its own."""
    return write_provenance_key(tmp_path / "keys")


@pytest.fixture()
def signed(tmp_path: Path, key: Path) -> Path:
    """A finalised run: safetensors, model card and signed provenance."""
    run = make_run(tmp_path)
    finalise_run(run, key)
    return run


def _verify_cli(run: Path, *args: str):
    return CliRunner().invoke(app, ["verify", str(run), *args])


def test_fresh_run_verifies_with_the_coordinator_key(signed: Path, key: Path) -> None:
    for name in (*ARTIFACTS, "provenance.json", "provenance.sig"):
        assert (signed / name).is_file(), name
    result = _verify_cli(signed, "--public-key", str(key.with_suffix(".pub")))
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "warning" not in result.output
    outcome = verify_run(signed, key.with_suffix(".pub"))
    assert outcome.ok and sorted(outcome.artifacts) == sorted(ARTIFACTS)


def test_without_a_public_key_verify_passes_but_warns(signed: Path) -> None:
    outcome = verify_run(signed)
    assert outcome.ok
    assert outcome.warnings and "--public-key" in outcome.warnings[0]
    result = _verify_cli(signed)
    assert result.exit_code == 0 and "warning" in result.output


@pytest.mark.parametrize("name", ARTIFACTS)
def test_one_changed_byte_in_an_artifact_fails_naming_it(signed: Path, name: str) -> None:
    path = signed / name
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    outcome = verify_run(signed)
    assert not outcome.ok
    assert [p for p in outcome.problems if p.startswith(f"{name}: sha256")], outcome.problems
    assert len(outcome.problems) == 1
    result = _verify_cli(signed)
    assert result.exit_code == 1
    assert name in result.output and "FAILED" in result.output


def test_a_missing_artifact_fails(signed: Path) -> None:
    (signed / "model.safetensors").unlink()
    outcome = verify_run(signed)
    assert outcome.problems == ["model.safetensors: missing (listed in provenance.json)"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"completed": 2', '"completed": 3'),  # content: still valid JSON
        ('"task": "ckd"', '"task": "cks"'),
        ('{\n  "artifacts"', '{\n "artifacts"'),  # whitespace only: the file is not the signed rendering
        ('{\n  "artifacts"', '[\n  "artifacts"'),  # no longer JSON
    ],
)
def test_one_changed_byte_in_the_manifest_fails(signed: Path, old: str, new: str) -> None:
    path = signed / "provenance.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    outcome = verify_run(signed)
    assert not outcome.ok
    assert any(
        p.startswith(("provenance.sig: signature does not match", "provenance.json"))
        for p in outcome.problems
    )
    assert _verify_cli(signed).exit_code == 1


def test_a_changed_signature_fails(signed: Path) -> None:
    path = signed / "provenance.sig"
    raw = bytearray(base64.b64decode(path.read_bytes()))
    raw[0] ^= 0x80
    path.write_bytes(base64.b64encode(bytes(raw)) + b"\n")
    assert any(p.startswith("provenance.sig: signature does not match") for p in verify_run(signed).problems)


def test_wrong_public_key_fails(signed: Path, tmp_path: Path) -> None:
    other = write_provenance_key(tmp_path / "other").with_suffix(".pub")
    outcome = verify_run(signed, other)
    assert any("signed by key" in p for p in outcome.problems)
    assert any(p.startswith("provenance.sig: signature does not match") for p in outcome.problems)
    assert _verify_cli(signed, "--public-key", str(other)).exit_code == 1


def test_resigning_tampered_files_with_another_key_is_caught_by_the_public_key(
    signed: Path, key: Path, tmp_path: Path
) -> None:
    summary = signed / "summary.json"
    summary.write_text(summary.read_text().replace('"accuracy": 0.85', '"accuracy": 0.99'))
    intruder = write_provenance_key(tmp_path / "intruder")
    assert CliRunner().invoke(app, ["sign", str(signed), "--key", str(intruder)]).exit_code == 0
    assert verify_run(signed).ok  # self-consistent ...
    assert not verify_run(signed, key.with_suffix(".pub")).ok  # ... but not the coordinator's


def test_unsigned_run_fails(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    outcome = verify_run(run)
    assert len(outcome.problems) == 1 and outcome.problems[0].startswith("provenance.json: missing")
    assert _verify_cli(run).exit_code == 1


def test_manifest_records_the_run(signed: Path, key: Path) -> None:
    manifest = json.loads((signed / "provenance.json").read_text())
    assert manifest["format"] == "fedward-provenance/1"
    assert manifest["task"] == "ckd" and manifest["strategy"] == "fedavg"
    assert manifest["flower-run-id"] == str(2**64 - 5)
    assert manifest["sites-per-round"] == [
        {
            "round": 1,
            "trained": ["royal-free", "st-marys"],
            "aggregated": ["st-marys"],
            "evaluated": ["royal-free", "st-marys"],
            "failures": [],
        },
        {
            "round": 2,
            "trained": ["st-marys"],
            "aggregated": ["st-marys"],
            "evaluated": ["st-marys"],
            "failures": ["royal-free: refused: budget"],
        },
    ]
    assert manifest["data-fingerprints"] == {"royal-free": None, "st-marys": FINGERPRINT}
    assert {s: v["epsilon"] for s, v in manifest["privacy"]["sites"].items()} == SITES
    assert manifest["metrics"]["overall"]["accuracy"] == 0.85
    assert manifest["run-config"]["num-server-rounds"] == 2
    assert sorted(manifest["artifacts"]) == sorted(ARTIFACTS)
    weights = (signed / "model.safetensors").read_bytes()
    assert manifest["artifacts"]["model.safetensors"]["bytes"] == len(weights)
    assert "fedward" in manifest["software"]
    public = serialization.load_pem_public_key(key.with_suffix(".pub").read_bytes())
    assert manifest["signer"]["public-key"] == base64.b64encode(public.public_bytes_raw()).decode()
    # the signature is over the canonical JSON bytes, checkable with nothing but `cryptography`
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    public.verify(base64.b64decode((signed / "provenance.sig").read_bytes()), canonical)


def test_build_manifest_names_a_missing_record(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"metrics\.jsonl: line 2: not valid JSON"):
        build_manifest(run)
    (run / "metrics.jsonl").unlink()  # a run that ended before its first round
    assert build_manifest(run)["sites-per-round"] == []
    (run / "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"summary\.json: missing"):
        build_manifest(run)


def test_git_commit_is_recorded_in_a_checkout() -> None:
    commit, _ = git_state()
    if (SOURCE_ROOT / ".git").exists():
        assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit)
    else:
        assert commit is None


def test_safetensors_loads_back_into_the_model(signed: Path) -> None:
    original = torch.load(signed / "model.pt", weights_only=True)
    model = get_task("ckd").build_model(RunConfig(task="ckd"))
    model.load_state_dict(load_file(signed / "model.safetensors"))  # strict: same keys and shapes
    loaded = model.state_dict()
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name
    _, metadata = load_exported(signed / "model.safetensors")
    assert metadata["task"] == "ckd" and metadata["model"] == "mlp" and metadata["run-name"] == "unit-run"
    assert metadata["fedward-version"]
    assert stat.S_IMODE((signed / "model.safetensors").stat().st_mode) == 0o644


def test_model_card_covers_use_data_metrics_privacy_and_limits(signed: Path) -> None:
    card = (signed / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Data", "## Metrics", "## Privacy spent", "## Limitations"):
        assert heading in card
    assert "Not a diagnosis" in card
    for site, epsilon in SITES.items():
        rows = [line for line in card.splitlines() if line.startswith(f"| {site} |")]
        assert len(rows) == 3, site  # data, metrics and privacy tables
        assert any(f"| {epsilon:.3f} |" in row for row in rows), (site, rows)
    assert "| st-marys | 96 | 24 |" in card  # samples per site
    assert "| royal-free | 16 | 0.875 |" in card  # per-site accuracy over its test cases
    assert f"`{FINGERPRINT[:16]}…`" in card
    assert "load_file" in card and "model.safetensors" in card


def test_model_card_of_a_synthetic_tumour_run_says_so(tmp_path: Path) -> None:
    card = model_card(make_run(tmp_path, task="tumour", data_root="/tmp/runs/x/sites"))
    assert "synthetic brain phantoms" in card and "**Synthetic data**" in card
    assert "label mix differs across sites" in card  # 75 % vs 25 % positive test cases


def test_class_counts_from_confusion_counts() -> None:
    assert class_counts({"tp": 3, "fn": 1, "tn": 5, "fp": 2}) == [7.0, 4.0]
    cm = {"cm-0-0": 2, "cm-0-1": 1, "cm-1-0": 0, "cm-1-1": 4, "cm-2-2": 1, "accuracy": 0.7}
    assert class_counts(cm) == [3.0, 4.0, 1.0]
    assert class_counts({"dice": 0.5}) is None


# ----------------------------------------------------------------------------- keys


def test_provision_writes_the_provenance_key_0600(tmp_path: Path) -> None:
    fed = provision(tmp_path / "fed", ["H1"])
    private = tmp_path / "fed" / "coordinator" / PROVENANCE_KEY
    public = private.with_suffix(".pub")
    assert fed.provenance_key == private
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o044
    key = load_private_key(private)
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    assert loaded.public_bytes_raw() == key.public_key().public_bytes_raw()
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()  # PEM PKCS8


def test_signing_key_resolution_order(tmp_path: Path, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    default = resolve_signing_key(None)  # the per-user key, made on first use
    assert default == tmp_path / "home" / ".fedward" / PROVENANCE_KEY
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert stat.S_IMODE(default.parent.stat().st_mode) == 0o700
    assert resolve_signing_key(None) == default  # reused, not replaced
    monkeypatch.setenv(SIGNING_KEY_ENV, str(key))
    assert resolve_signing_key(None) == key
    other = write_provenance_key(tmp_path / "other")
    assert resolve_signing_key(other) == other
    with pytest.raises(ConfigError, match=r"nowhere\.key: file not found"):
        resolve_signing_key(tmp_path / "nowhere.key")


def test_a_readable_or_foreign_key_is_refused_before_anything_is_written(tmp_path: Path, key: Path) -> None:
    run = make_run(tmp_path)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other accounts"):
        finalise_run(run, key)
    assert not (run / "model.safetensors").exists() and not (run / "provenance.json").exists()
    foreign = tmp_path / "fed" / "coordinator" / "ca.key"
    provision(tmp_path / "fed", ["H1"])
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        finalise_run(run, foreign)
