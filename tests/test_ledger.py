"""The privacy ledger: lifetime ε per data set, across restarts, runs and concurrent processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from fedward.client.ledger import LEDGER_FILE, PrivacyLedger, dataset_fingerprint
from fedward.common.errors import ConfigError, PrivacyError

DELTA = 1e-5
ROUND_1 = [(1.1, 0.25, 8)]
ROUND_2 = [(1.1, 0.25, 8), (0.9, 0.1, 20)]


def _record_many(state_dir: str, fingerprint: str, worker: int, count: int, barrier: Barrier) -> None:
    """Child process: open its own ledger and record `count` single-entry rounds."""
    barrier.wait(timeout=30)  # all four create the (new) ledger at once, then write at once
    ledger = PrivacyLedger(Path(state_dir))
    barrier.wait(timeout=30)
    for i in range(count):
        ledger.record(fingerprint, f"run-{worker}", i + 1, [(1.0, 0.01, 1)], DELTA, "rdp", "ckd")


def test_ledger_survives_restart_and_accumulates_runs(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    assert ledger.spent("fp", DELTA, "rdp") == 0.0
    ledger.record("fp", "run-a", 1, ROUND_1, DELTA, "rdp", "ckd")
    after_first = ledger.spent("fp", DELTA, "rdp")
    assert after_first > 0
    del ledger

    reopened = PrivacyLedger(tmp_path)  # a restart: only the file on disk remains
    assert reopened.spent("fp", DELTA, "rdp") == pytest.approx(after_first, rel=1e-12)
    reopened.record("fp", "run-b", 1, ROUND_2, DELTA, "rdp", "ckd")
    assert reopened.spent("fp", DELTA, "rdp") > after_first
    assert reopened.history("fp").steps == 8 + 8 + 20
    assert [(r.run_id, r.server_round, r.steps) for r in reopened.rows("fp")] == [
        ("run-a", 1, 8),
        ("run-b", 1, 8),
        ("run-b", 1, 20),
    ]
    assert (tmp_path / LEDGER_FILE).is_file()
    with sqlite3.connect(tmp_path / LEDGER_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_epsilon_is_composed_over_the_whole_history_by_the_accountant(tmp_path: Path) -> None:
    # imported here, not at the top: the spawned workers below import this module, and Opacus
    # (torch) takes seconds to load in each of them
    from fedward.common.privacy import compose_epsilon

    ledger = PrivacyLedger(tmp_path)
    ledger.record("fp", "run-a", 1, ROUND_1, DELTA, "rdp", "ckd")
    ledger.record("fp", "run-a", 2, ROUND_2, DELTA, "rdp", "ckd")
    ledger.record("other", "run-a", 1, [(0.5, 0.5, 100)], DELTA, "rdp", "ckd")  # another data set
    recorded = ROUND_1 + ROUND_2
    assert ledger.spent("fp", DELTA, "rdp") == pytest.approx(
        compose_epsilon(recorded, DELTA, "rdp"), rel=1e-9
    )
    # the same total as three 8/8/20-step rounds, not a per-round ε summed up
    assert ledger.spent("fp", DELTA, "rdp") < sum(compose_epsilon([e], DELTA, "rdp") for e in recorded)

    extra = [(1.1, 0.25, 40)]
    projected = ledger.project("fp", extra, DELTA, "rdp")
    assert projected == pytest.approx(compose_epsilon(recorded + extra, DELTA, "rdp"), rel=1e-9)
    assert ledger.history("fp").steps == 36  # projecting records nothing


def test_datasets_summarise_each_fingerprint(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    ledger.record("fp-1", "run-a", 1, ROUND_1, DELTA, "rdp", "ckd")
    ledger.record("fp-1", "run-b", 1, ROUND_2, DELTA, "rdp", "ckd")
    ledger.record("fp-2", "run-b", 1, ROUND_1, DELTA, "rdp", "ckd")
    summaries = {s.fingerprint: s for s in ledger.datasets()}
    assert set(summaries) == {"fp-1", "fp-2"}
    assert (summaries["fp-1"].steps, summaries["fp-1"].runs) == (36, 2)
    assert (summaries["fp-2"].steps, summaries["fp-2"].runs) == (8, 1)
    assert summaries["fp-1"].first_recorded <= summaries["fp-1"].last_recorded


def test_bad_entries_are_rejected_and_nothing_is_written(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    with pytest.raises(PrivacyError):
        ledger.record("fp", "run", 1, [(1.0, 0.1, 5), (0.0, 0.1, 5)], DELTA, "rdp", "ckd")
    with pytest.raises(PrivacyError):
        ledger.record("fp", "run", 1, ROUND_1, 1.5, "rdp", "ckd")
    assert ledger.rows("fp") == []


def test_concurrent_processes_lose_no_writes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    workers = [ctx.Process(target=_record_many, args=(str(tmp_path), "fp", w, 25, barrier)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    ledger = PrivacyLedger(tmp_path)
    rows = ledger.rows("fp")
    assert len(rows) == 100
    assert sorted({r.run_id for r in rows}) == [f"run-{w}" for w in range(4)]
    assert sum(r.steps for r in rows) == 100


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_fingerprint_follows_the_manifest_not_the_contents(tmp_path: Path) -> None:
    data = tmp_path / "site"
    train = _write(data / "train.csv", "a,b\n1,2\n")
    _write(data / "images" / "x.nii", "voxels")
    before = dataset_fingerprint([data])
    assert len(before) == 64 and before == dataset_fingerprint([data])

    os.utime(train, ns=(1, 1))  # touched or copied: same data set, same budget
    _write(data / ".DS_Store", "junk")
    assert dataset_fingerprint([data]) == before
    assert dataset_fingerprint([train]) == dataset_fingerprint([train])

    train.write_text("a,b\n1,2\n3,4\n")  # a file grows: a different data set
    assert dataset_fingerprint([data]) != before

    with pytest.raises(ConfigError, match="does not exist"):
        dataset_fingerprint([tmp_path / "missing"])
