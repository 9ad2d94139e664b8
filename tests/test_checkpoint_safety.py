"""Round checkpoints hold no pickle, are signed with the federation's key and are checked before resume.

The attack tests plant what an outsider with write access to the run directory would: a pickle under
the old `checkpoint.pt` name whose unpickling creates a file, one changed byte, an edited JSON state, an
arrays file of another checkpoint. Resume (`RoundCheckpoint.load`, and the ServerApp itself) and
`fedward verify` refuse each, and the planted code never runs.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Array, ArrayRecord
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from test_provenance import make_run
from typer.testing import CliRunner

from fedward.cli import app
from fedward.server.checkpoint import CHECKPOINT, RoundCheckpoint, _Stateful
from fedward.server.checkpoint_codec import CheckpointError, decode, encode
from fedward.server.checkpoint_store import LEGACY_CHECKPOINT, checkpoint_files
from fedward.server.deployment.provision import write_provenance_key
from fedward.server.export import finalise_run
from fedward.server.provenance.manifest import verify_run


class _Touch:
    """Unpickling this creates `marker`: the code an attacker would run on the coordinator."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _state() -> RoundCheckpoint:
    """A checkpoint with every kind of value the strategy chain and recorder hold."""
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, dtype=np.int64)}
    strategy = [
        {"rejections": {1: [], 2: ["site-1"]}, "dtypes": {"w": np.dtype("float32")}, "bound": 3.5},
        {
            "m_t": {"w": np.full((2, 3), 1e-8)},
            "current_arrays": ArrayRecord({"w": Array(arrays["w"])}),
            "momentum_vector": [np.ones(3, dtype=np.float16)],
            "accountant": _Stateful({"orders": [1.5, 2.0], "compositions": [{"count": 1}]}),
            "scale": np.float32(0.25),
            "seen": {"site-0", "site-1"},
        },
    ]
    recorder = {
        "epsilon": {"site-0": float("inf")},
        "budget": {"site-0": {"left": float("nan")}},
        "stop": None,
    }
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    return RoundCheckpoint(2, "run-uid-1", arrays, strategy, recorder, rng)


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    return write_provenance_key(tmp_path / "keys")


@pytest.fixture()
def saved(tmp_path: Path, key: Path) -> Path:
    run = tmp_path / "runs" / "unit-run"
    run.mkdir(parents=True)
    _state().save(run, key)
    return run


def _same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, ArrayRecord):
        assert list(a) == list(b) and all(a[k].data == b[k].data for k in a)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, _Stateful):
        _same(a.state, b.state)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def test_everything_round_trips_exactly(saved: Path, key: Path) -> None:
    original, loaded = _state(), RoundCheckpoint.load(saved, key)
    assert loaded is not None and loaded.server_round == 2 and loaded.run_uid == "run-uid-1"
    for name in ("arrays", "strategy", "recorder", "rng"):
        _same(getattr(original, name), getattr(loaded, name))
    loaded.strategy[1]["m_t"]["w"] *= 2  # strategies update their state in place
    assert checkpoint_files(saved) == [CHECKPOINT, "checkpoint-round-0002.safetensors"]


def test_the_files_are_json_and_safetensors_only(saved: Path) -> None:
    document = json.loads((saved / CHECKPOINT).read_text())
    assert document["round"] == 2 and document["signer"].startswith("sha256:")
    assert (saved / "checkpoint-round-0002.safetensors").read_bytes()[8:9] == b"{"  # safetensors header


def test_a_newer_round_replaces_the_arrays_file(saved: Path, key: Path) -> None:
    later = _state()
    later.server_round = 3
    later.save(saved, key)
    assert checkpoint_files(saved) == [CHECKPOINT, "checkpoint-round-0003.safetensors"]
    assert RoundCheckpoint.load(saved, key).server_round == 3


def test_a_value_of_unknown_type_fails_naming_where_it_is() -> None:
    with pytest.raises(CheckpointError, match=r"\['strategy'\]\[0\]\['observer'\]: a builtins.object cannot"):
        encode({"strategy": [{"observer": object()}]})


@pytest.mark.parametrize(
    "name",
    [
        "os:system",
        "subprocess:Popen",
        "builtins:eval",
        "fedward.server.checkpoint:Path",
        "server.checkpoint:Path",
    ],
)
def test_decoding_builds_no_object_a_file_names(name: str) -> None:
    """Even a correctly signed state cannot name a callable: only fedward's dataclasses are rebuilt."""
    with pytest.raises(CheckpointError):
        decode({"$dataclass": name, "fields": {}}, {})


# ----------------------------------------------------------------------------- attacks on resume


def _plant_pickle(run: Path, marker: Path) -> None:
    (run / LEGACY_CHECKPOINT).write_bytes(pickle.dumps({"format": 1, "x": _Touch(marker)}))


def _flip_array_byte(run: Path) -> None:
    path = run / "checkpoint-round-0002.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _edit_json(run: Path) -> None:
    path = run / CHECKPOINT
    document = json.loads(path.read_text())
    document["state"]["recorder"]["stop"] = "edited"
    path.write_text(json.dumps(document, indent=1))


def _swap_arrays(run: Path, key: Path) -> None:
    other = run.parent / "other" / run.name
    other.mkdir(parents=True)
    changed = _state()
    changed.arrays["w"] = changed.arrays["w"] + 1
    changed.save(other, key)
    shutil.copy(other / "checkpoint-round-0002.safetensors", run / "checkpoint-round-0002.safetensors")


def _sign_with_another_key(run: Path, key: Path) -> None:
    _state().save(run, write_provenance_key(run.parent / "intruder"))


ATTACKS = {
    "flipped-array-byte": lambda run, key: _flip_array_byte(run),
    "edited-json": lambda run, key: _edit_json(run),
    "swapped-arrays": _swap_arrays,
    "another-key": _sign_with_another_key,
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_tampered_checkpoint_is_refused_on_resume(saved: Path, key: Path, attack: str) -> None:
    ATTACKS[attack](saved, key)
    with pytest.raises(CheckpointError, match="checkpoint"):
        RoundCheckpoint.load(saved, key)


def test_a_planted_pickle_is_refused_and_never_unpickled(saved: Path, key: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant_pickle(saved, marker)
    with pytest.raises(CheckpointError, match="no longer loaded"):
        RoundCheckpoint.load(saved, key)
    assert not marker.exists()


def test_a_pickle_under_the_new_name_is_refused_unread(saved: Path, key: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (saved / CHECKPOINT).write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(CheckpointError, match="not a readable JSON checkpoint"):
        RoundCheckpoint.load(saved, key)
    assert not marker.exists()


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize("attack", ["pickle", "flipped-array-byte"])
def test_the_server_app_refuses_to_resume_before_contacting_sites(
    tmp_path: Path, signing_key: Path, attack: str
) -> None:
    """The ServerApp verifies with the run's own signing key; the planted code never runs."""
    config = ckd_run_config(tmp_path / "no-sites", tmp_path / "runs", **{"run-name": "r", "resume": True})
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    _state().save(run, signing_key)
    marker = tmp_path / "pwned"
    _plant_pickle(run, marker) if attack == "pickle" else _flip_array_byte(run)
    grid = InProcessGrid(config, 2)
    with pytest.raises(CheckpointError):
        run_server(grid, config)
    assert not marker.exists() and grid.replies == []


# ----------------------------------------------------------------------------- fedward verify


@pytest.fixture()
def signed_run(tmp_path: Path, key: Path) -> Path:
    """A finished, signed run directory whose last checkpoint is covered by the manifest."""
    run = make_run(tmp_path)
    _state().save(run, key)
    finalise_run(run, key)
    return run


def test_verify_covers_the_checkpoint(signed_run: Path, key: Path) -> None:
    outcome = verify_run(signed_run, key.with_suffix(".pub"))
    assert outcome.ok, outcome.problems
    assert {CHECKPOINT, "checkpoint-round-0002.safetensors"} <= set(outcome.artifacts)


@pytest.mark.parametrize("attack", [*ATTACKS, "pickle"])
def test_verify_refuses_a_tampered_checkpoint(
    signed_run: Path, key: Path, tmp_path: Path, attack: str
) -> None:
    marker = tmp_path / "pwned"
    if attack == "pickle":
        _plant_pickle(signed_run, marker)
    else:
        ATTACKS[attack](signed_run, key)
    result = CliRunner().invoke(
        app, ["verify", str(signed_run), "--public-key", str(key.with_suffix(".pub"))]
    )
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "checkpoint" in result.output
    assert not marker.exists()


def test_verify_refuses_a_checkpoint_added_after_signing(tmp_path: Path, key: Path) -> None:
    run = make_run(tmp_path)
    finalise_run(run, key)
    _state().save(run, key)  # validly signed, but not what the manifest recorded
    outcome = verify_run(run, key.with_suffix(".pub"))
    assert not outcome.ok and any("not in provenance.json" in p for p in outcome.problems)


def test_a_checkpoint_from_before_the_fedward_namespace_still_decodes() -> None:
    """Checkpoints written when the packages were top-level (`strategies.x`) name the same dataclasses."""
    from fedward.strategies.validation import Reference

    data, arrays = encode({"reference": Reference(values={}, dtypes={})})
    assert data["reference"]["$dataclass"] == "fedward.strategies.validation:Reference"
    data["reference"]["$dataclass"] = "strategies.validation:Reference"
    assert isinstance(decode(data, arrays)["reference"], Reference)
