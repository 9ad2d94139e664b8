"""The site's privacy ledger: every private step batch ever taken on a data set, kept on disk.

Rows live in `<state_dir>/privacy-ledger.sqlite`, keyed by a fingerprint of the data set. ε(δ) is
never stored: it is recomputed over the whole history with an Opacus accountant
(`common.privacy.compose_epsilon`). The database runs in WAL mode and every write is one
`BEGIN IMMEDIATE` transaction, so restarts and concurrent runs on the same site lose no rows.
Listing and recording do not import Opacus; only ε computations do.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    from common.privacy import PrivacyHistory

LEDGER_FILE = "privacy-ledger.sqlite"
_MANIFEST_VERSION = b"fedward-manifest-v1\n"
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint TEXT NOT NULL,
        run_id TEXT NOT NULL,
        server_round INTEGER NOT NULL,
        noise_multiplier REAL NOT NULL,
        sample_rate REAL NOT NULL,
        steps INTEGER NOT NULL,
        delta REAL NOT NULL,
        accountant TEXT NOT NULL,
        task TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS steps_fingerprint ON steps (fingerprint)",
)

Entry = tuple[float, float, int]  # (noise multiplier, sampling rate, steps), as in Opacus' history


def dataset_fingerprint(paths: list[Path]) -> str:
    """SHA-256 of the data set's file manifest: sorted (relative name, size in bytes).

    A directory stands for every non-hidden file below it (names relative to it); a file for its
    name. File contents are not read. Modification times are left out on purpose: copying,
    restoring or touching the files must not give a fresh privacy budget. Renaming, adding,
    removing or resizing a file gives a new fingerprint.
    """
    manifest: list[tuple[str, int]] = []
    for path in paths:
        if path.is_dir():
            files = [
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            manifest += [(p.relative_to(path).as_posix(), p.stat().st_size) for p in files]
        elif path.is_file():
            manifest.append((path.name, path.stat().st_size))
        else:
            raise ConfigError(f"data set path {path} does not exist")
    if not manifest:
        raise ConfigError(f"no data files in {', '.join(map(str, paths)) or 'an empty path list'}")
    digest = hashlib.sha256(_MANIFEST_VERSION)
    for name, size in sorted(manifest):
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class LedgerRow:
    """One recorded step batch."""

    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    task: str
    recorded_at: datetime


@dataclass(frozen=True)
class DatasetSummary:
    """What the ledger holds for one data set."""

    fingerprint: str
    steps: int
    runs: int
    first_recorded: datetime
    last_recorded: datetime


class PrivacyLedger:
    """Append-only record of the private steps a site took, per data set fingerprint."""

    def __init__(self, state_dir: Path, timeout: float = 30.0) -> None:
        self.path = Path(state_dir) / LEDGER_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: ledger schema {version} is newer than this fedward")
            for statement in _SCHEMA:  # not executescript(): it would commit the open transaction
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            self._ensure_wal(db)
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_wal(self, db: sqlite3.Connection) -> None:
        """Switch a new ledger to WAL. SQLite does not wait on the lock this needs, so retry here:
        processes that open a fresh ledger together would otherwise fail with 'database is locked'."""
        deadline = time.monotonic() + self._timeout
        while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if mode != "wal":
                raise ConfigError(f"{self.path}: the file system does not support SQLite's WAL mode")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start (no lost updates)."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record(
        self,
        fingerprint: str,
        run_id: str,
        server_round: int,
        entries: list[Entry],
        delta: float,
        accountant: str,
        task: str,
    ) -> None:
        """Append one row per (noise multiplier, sampling rate, steps) entry, all in one transaction.

        `delta` and `accountant` are what the run reported its ε with; they are kept for the
        history listing only: `spent` and `project` compose under the δ and accountant they are given.
        """
        if not 0 < delta < 1:
            raise PrivacyError(f"delta must be in (0, 1), got {delta}")
        for sigma, q, steps in entries:
            if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and int(steps) >= 1):
                raise PrivacyError(f"bad ledger entry (noise {sigma}, sample rate {q}, steps {steps})")
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        rows = [
            (fingerprint, run_id, server_round, float(s), float(q), int(n), delta, accountant, task, now)
            for s, q, n in entries
        ]
        with self._write() as db:
            db.executemany(
                "INSERT INTO steps (fingerprint, run_id, server_round, noise_multiplier, sample_rate, "
                "steps, delta, accountant, task, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def history(self, fingerprint: str) -> PrivacyHistory:
        """All steps on the data set, equal mechanisms merged (composition does not depend on order)."""
        from common.privacy import PrivacyHistory  # Opacus and torch load in seconds: only when needed

        with closing(self._connect()) as db:
            grouped = db.execute(
                "SELECT noise_multiplier, sample_rate, SUM(steps) FROM steps WHERE fingerprint = ? "
                "GROUP BY noise_multiplier, sample_rate ORDER BY MIN(id)",
                (fingerprint,),
            ).fetchall()
        history = PrivacyHistory()
        history.extend([(s, q, int(n)) for s, q, n in grouped])
        return history

    def spent(self, fingerprint: str, delta: float, accountant: str = "prv") -> float:
        """ε(δ) composed over every step recorded for the data set (0 when none)."""
        return self.history(fingerprint).epsilon(delta, accountant)

    def project(
        self, fingerprint: str, extra_entries: list[Entry], delta: float, accountant: str = "prv"
    ) -> float:
        """ε(δ) the data set would have spent after also taking `extra_entries`."""
        history = self.history(fingerprint)
        history.extend(extra_entries)
        return history.epsilon(delta, accountant)

    def datasets(self) -> list[DatasetSummary]:
        """One summary per data set fingerprint, most recently used first."""
        with closing(self._connect()) as db:
            found = db.execute(
                "SELECT fingerprint, SUM(steps), COUNT(DISTINCT run_id), MIN(recorded_at), "
                "MAX(recorded_at) FROM steps GROUP BY fingerprint ORDER BY MAX(recorded_at) DESC"
            ).fetchall()
        return [
            DatasetSummary(
                fp, int(steps), int(runs), datetime.fromisoformat(first), datetime.fromisoformat(last)
            )
            for fp, steps, runs, first, last in found
        ]

    def rows(self, fingerprint: str) -> list[LedgerRow]:
        """Every recorded step batch of the data set, oldest first."""
        with closing(self._connect()) as db:
            found = db.execute(
                "SELECT run_id, server_round, noise_multiplier, sample_rate, steps, delta, accountant, "
                "task, recorded_at FROM steps WHERE fingerprint = ? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [LedgerRow(*row[:8], recorded_at=datetime.fromisoformat(row[8])) for row in found]
