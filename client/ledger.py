"""The site's privacy ledger: every private step batch ever taken on a data set, kept on disk.

Rows live in `<ledger dir>/privacy-ledger.sqlite` (the folder comes from the site policy's `ledger-dir`,
else the node's `state-dir`; see `client/budget.py`). A data set is identified by the hash of its
sorted patient keys (`common/data/patient_keys.py`), and the ledger keeps each data set's patient keys,
so a data set that shares patients with one already recorded inherits that history: a patient's spend
composes the histories of every data set that holds it, and a data set has spent what its most-spent
patient has. ε(δ) is never stored: it is recomputed with an Opacus accountant.

Rows are appended, never changed: `register` (a data set's patients), `reserve` (steps planned for a
round, counted as spent until settled), `settle` (closes a reservation) and `spend` (steps really
taken). Each row carries `prev_hash` and `row_hash` (SHA-256 over the previous hash and the canonical
row), and `privacy-ledger.head` beside the database holds the row count and last hash, written while the
write lock is held, so that `verify` finds an edited, deleted or truncated row. Every write is one
`BEGIN IMMEDIATE` transaction in WAL mode: a cap check and its reservation cannot interleave with
another process's. Listing and recording do not import Opacus; only ε computations do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fedward.common.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    from fedward.common.privacy import PrivacyHistory

LEDGER_FILE = "privacy-ledger.sqlite"
HEAD_FILE = "privacy-ledger.head"
SECRET_FILE = "privacy-ledger.key"
_MANIFEST_VERSION = b"fedward-manifest-v1\n"
_IDENTITY_VERSION = b"fedward-dataset-v1\n"
_GENESIS = "0" * 64
_SCHEMA_VERSION = 2
_COLUMNS = (
    "kind, fingerprint, ref, run_id, server_round, noise_multiplier, sample_rate, steps, delta, "
    "accountant, task, label, recorded_at"
)
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        ref TEXT NOT NULL,
        run_id TEXT NOT NULL,
        server_round INTEGER NOT NULL,
        noise_multiplier REAL NOT NULL,
        sample_rate REAL NOT NULL,
        steps INTEGER NOT NULL,
        delta REAL NOT NULL,
        accountant TEXT NOT NULL,
        task TEXT NOT NULL,
        label TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        row_hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS rows_fingerprint ON rows (fingerprint)",
    "CREATE INDEX IF NOT EXISTS rows_ref ON rows (ref)",
    """CREATE TABLE IF NOT EXISTS members (
        fingerprint TEXT NOT NULL,
        patient TEXT NOT NULL,
        PRIMARY KEY (fingerprint, patient)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS members_patient ON members (patient)",
)
# rows that count: steps taken, and reservations not (yet) settled
_COUNTED = (
    "(kind = 'spend' OR (kind = 'reserve' AND NOT EXISTS "
    "(SELECT 1 FROM rows AS s WHERE s.kind = 'settle' AND s.ref = rows.ref)))"
)
_CHUNK = 500  # SQLite host parameters per query

Entry = tuple[float, float, int]  # (noise multiplier, sampling rate, steps), as in Opacus' history
Check = Callable[[float], "str | None"]  # projected ε -> refusal reason


def dataset_fingerprint(paths: list[Path]) -> str:
    """SHA-256 of a file manifest: sorted (relative name, size in bytes). Not the ledger's key any more
    (that is `dataset_identity` of the patient keys); kept for callers that describe files.

    A directory stands for every non-hidden file below it (names relative to it); a file for its name.
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


def dataset_identity(patient_keys: Iterable[str]) -> str:
    """The data set's identity in the ledger: SHA-256 of its sorted patient keys."""
    digest = hashlib.sha256(_IDENTITY_VERSION)
    for key in sorted(patient_keys):
        digest.update(f"{key}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class LedgerRow:
    """One step batch that counts: taken (`spend`) or reserved and not settled (`reserve`)."""

    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    task: str
    recorded_at: datetime
    kind: str = "spend"
    label: str = ""


@dataclass(frozen=True)
class DatasetSummary:
    """What the ledger holds for one data set (its own rows, not inherited ones)."""

    fingerprint: str
    steps: int
    runs: int
    first_recorded: datetime
    last_recorded: datetime
    patients: int = 0


@dataclass(frozen=True)
class _Row:
    kind: str
    fingerprint: str
    ref: str
    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    task: str
    label: str
    recorded_at: str

    def canonical(self, row_id: int) -> str:
        """The row as hashed: a compact JSON list (floats as their shortest round-trip repr)."""
        return json.dumps([row_id, *self.__dict__.values()], separators=(",", ":"), ensure_ascii=False)


def _row_hash(prev_hash: str, row_id: int, row: _Row) -> str:
    return hashlib.sha256(f"{prev_hash}\n{row.canonical(row_id)}".encode()).hexdigest()


def _members(db: sqlite3.Connection, fingerprint: str) -> list[str]:
    return [k for (k,) in db.execute("SELECT patient FROM members WHERE fingerprint = ?", (fingerprint,))]


def _batches(where: _Row, entries: list[Entry]) -> list[_Row]:
    """One row per (noise multiplier, sampling rate, steps) entry, the rest as in `where`."""
    return [
        replace(where, noise_multiplier=float(s), sample_rate=float(q), steps=int(n)) for s, q, n in entries
    ]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_entries(entries: list[Entry], delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    for sigma, q, steps in entries:
        if not (math.isfinite(sigma) and sigma > 0 and 0 < q <= 1 and int(steps) >= 1):
            raise PrivacyError(f"bad ledger entry (noise {sigma}, sample rate {q}, steps {steps})")


class PrivacyLedger:
    """Append-only, hash-chained record of the private steps a site took, per data set."""

    def __init__(self, ledger_dir: Path, timeout: float = 30.0) -> None:
        self.path = Path(ledger_dir) / LEDGER_FILE
        self.head_path = self.path.with_name(HEAD_FILE)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._owner: tuple[int, int] | None = None
        with self._db() as db:  # a site opens its ledger per message: read before writing
            current = db.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION
        if not current:
            self._set_up()

    def _set_up(self) -> None:
        """Refuse an old or newer schema; create the tables (idempotent) and switch to WAL."""
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:
                raise ConfigError(
                    f"{self.path}: privacy ledger schema 1 (keyed on file names and sizes) cannot be used by "
                    f"this fedward (schema {_SCHEMA_VERSION}, keyed on patients), and its rows cannot be "
                    "mapped to patients. Keep it as a record: move it and its -wal/-shm files aside (e.g. "
                    "rename to privacy-ledger.v1.sqlite), read what it spent with the previous fedward "
                    "(`fedward site budget`), and lower the policy's epsilon-cap by that much; a new ledger "
                    "is created here on the next run"
                )
            if version > _SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: ledger schema {version} is newer than this fedward")
            for statement in _SCHEMA:  # not executescript(): it would commit the open transaction
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This ledger's connection, opened once per process and thread, closed with the ledger object: a
        message's reserve, settle and reads reuse it (closing SQLite's last connection checkpoints)."""
        owner = (os.getpid(), threading.get_ident())
        if self._connection is None or self._owner != owner:
            self._connection, self._owner = self._connect(), owner  # a forked child never reuses it
        yield self._connection

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
        """One write transaction, holding the write lock from its start (no lost updates). When rows
        were appended, the head file is rewritten before COMMIT, while the lock is still held."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            before = db.total_changes
            try:
                yield db
                if db.total_changes != before:
                    self._write_head(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _write_head(self, db: sqlite3.Connection) -> None:
        count, last = self._tail(db)
        text = json.dumps({"rows": count, "last-hash": last}) + "\n"
        tmp = self.head_path.with_name(f".{HEAD_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.head_path)

    @staticmethod
    def _tail(db: sqlite3.Connection) -> tuple[int, str]:
        count = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        last = db.execute("SELECT row_hash FROM rows ORDER BY id DESC LIMIT 1").fetchone()
        return int(count), last[0] if last else _GENESIS

    def _append(self, db: sqlite3.Connection, rows: list[_Row]) -> None:
        """Append `rows` to the chain (inside a write transaction)."""
        _, prev = self._tail(db)
        for row in rows:
            cursor = db.execute(
                f"INSERT INTO rows ({_COLUMNS}, prev_hash, row_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '')",
                (*row.__dict__.values(), prev),
            )
            row_id = int(cursor.lastrowid or 0)
            prev = _row_hash(prev, row_id, row)
            db.execute("UPDATE rows SET row_hash = ? WHERE id = ?", (prev, row_id))

    # ------------------------------------------------------------------ data sets and their patients

    def _register(self, db: sqlite3.Connection, fingerprint: str, keys: list[str] | None) -> None:
        """Record the data set's patients once (a chained `register` row commits to them)."""
        if not keys:
            return
        if dataset_identity(keys) != fingerprint:
            raise PrivacyError(f"data set {fingerprint[:16]}: patient keys do not hash to its identity")
        known = db.execute(
            "SELECT 1 FROM rows WHERE kind = 'register' AND fingerprint = ? LIMIT 1", (fingerprint,)
        ).fetchone()
        if known:
            return
        db.executemany(
            "INSERT OR IGNORE INTO members (fingerprint, patient) VALUES (?, ?)",
            [(fingerprint, k) for k in set(keys)],
        )
        self._append(
            db, [_Row("register", fingerprint, "", "", 0, 1.0, 1.0, 0, 0.5, "", "", str(len(keys)), _now())]
        )

    def _groups(self, db: sqlite3.Connection, fingerprint: str, keys: list[str] | None) -> list[frozenset]:
        """The distinct sets of data sets the patients of `fingerprint` belong to, maximal ones only
        (a subset's composition is never above its superset's)."""
        if keys is None:
            keys = _members(db, fingerprint)
        if not keys:
            return [frozenset({fingerprint})]
        wanted = sorted(set(keys))
        member_of: dict[str, set[str]] = {k: {fingerprint} for k in wanted}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            found = db.execute(
                f"SELECT patient, fingerprint FROM members WHERE patient IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for patient, other in found:
                member_of[patient].add(other)
        distinct = {frozenset(s) for s in member_of.values()}
        return [g for g in distinct if not any(g < other for other in distinct)]

    @staticmethod
    def _entries(db: sqlite3.Connection, fingerprints: Iterable[str]) -> list[Entry]:
        """Counted steps of the data sets, equal mechanisms merged (composition ignores order)."""
        names = sorted(fingerprints)
        grouped = db.execute(
            "SELECT noise_multiplier, sample_rate, SUM(steps) FROM rows "
            f"WHERE fingerprint IN ({','.join('?' * len(names))}) AND {_COUNTED} "
            "GROUP BY noise_multiplier, sample_rate ORDER BY MIN(id)",
            names,
        ).fetchall()
        return [(float(s), float(q), int(n)) for s, q, n in grouped]

    def _worst(
        self,
        db: sqlite3.Connection,
        fingerprint: str,
        keys: list[str] | None,
        extra: list[Entry],
        delta: float | None,
        accountant: str,
    ) -> PrivacyHistory:
        """The history of the most-spent patient group, `extra` included. Without δ, several maximal
        groups are merged into one history (an upper bound)."""
        from fedward.common.privacy import (
            PrivacyHistory,  # Opacus and torch load in seconds: only when needed
        )

        groups = self._groups(db, fingerprint, keys)
        histories = []
        for group in groups:
            history = PrivacyHistory()
            history.extend(self._entries(db, group))
            history.extend(extra)
            histories.append(history)
        if len(histories) == 1:
            return histories[0]
        if delta is None:
            merged = PrivacyHistory()
            merged.extend(self._entries(db, frozenset().union(*groups)))
            merged.extend(extra)
            return merged
        return max(histories, key=lambda h: h.epsilon(delta, accountant))

    # ------------------------------------------------------------------ reading

    def history(
        self,
        fingerprint: str,
        keys: list[str] | None = None,
        delta: float | None = None,
        accountant: str = "prv",
    ) -> PrivacyHistory:
        """Everything the data set's most-spent patients have spent (pending reservations included).

        `keys` are the data set's patient keys (default: those the ledger registered for it); `delta`
        picks the most-spent group when patients fall into several (without it they are merged).
        """
        with self._db() as db:
            return self._worst(db, fingerprint, keys, [], delta, accountant)

    def spent(
        self, fingerprint: str, delta: float, accountant: str = "prv", keys: list[str] | None = None
    ) -> float:
        """ε(δ) composed over every step that counts for the data set (0 when none)."""
        return self.history(fingerprint, keys, delta, accountant).epsilon(delta, accountant)

    def project(
        self,
        fingerprint: str,
        extra_entries: list[Entry],
        delta: float,
        accountant: str = "prv",
        keys: list[str] | None = None,
    ) -> float:
        """ε(δ) the data set would have spent after also taking `extra_entries`."""
        with self._db() as db:
            history = self._worst(db, fingerprint, keys, list(extra_entries), delta, accountant)
        return history.epsilon(delta, accountant)

    def patients(self, fingerprint: str) -> list[str]:
        """The patient keys registered for the data set."""
        with self._db() as db:
            return _members(db, fingerprint)

    def datasets(self) -> list[DatasetSummary]:
        """One summary per data set (its own counted steps), most recently used first."""
        with self._db() as db:
            found = db.execute(
                "SELECT fingerprint, SUM(CASE WHEN kind = 'register' THEN 0 ELSE steps END), "
                "COUNT(DISTINCT CASE WHEN kind = 'register' THEN NULL ELSE run_id END), MIN(recorded_at), "
                "MAX(recorded_at), "
                "(SELECT COUNT(*) FROM members AS m WHERE m.fingerprint = rows.fingerprint) "
                f"FROM rows WHERE kind = 'register' OR {_COUNTED} "
                "GROUP BY fingerprint ORDER BY MAX(recorded_at) DESC"
            ).fetchall()
        return [
            DatasetSummary(
                fp, int(steps), int(runs), datetime.fromisoformat(first), datetime.fromisoformat(last), int(n)
            )
            for fp, steps, runs, first, last, n in found
        ]

    def rows(self, fingerprint: str) -> list[LedgerRow]:
        """The data set's own step batches that count (taken, or reserved and not settled), oldest first."""
        with self._db() as db:
            found = db.execute(
                "SELECT run_id, server_round, noise_multiplier, sample_rate, steps, delta, accountant, "
                f"task, recorded_at, kind, label FROM rows WHERE fingerprint = ? AND {_COUNTED} ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [
            LedgerRow(*row[:8], recorded_at=datetime.fromisoformat(row[8]), kind=row[9], label=row[10])
            for row in found
        ]

    # ------------------------------------------------------------------ writing

    def record(
        self,
        fingerprint: str,
        run_id: str,
        server_round: int,
        entries: list[Entry],
        delta: float,
        accountant: str,
        task: str,
        *,
        keys: list[str] | None = None,
        label: str = "",
    ) -> None:
        """Append one `spend` row per (noise multiplier, sampling rate, steps) entry, in one transaction
        (no cap check: `reserve` and `spend_within` check and write together)."""
        self.spend_within(fingerprint, keys, run_id, server_round, entries, delta, accountant, task, label)

    def reserve(
        self,
        fingerprint: str,
        keys: list[str] | None,
        run_id: str,
        server_round: int,
        entries: list[Entry],
        delta: float,
        accountant: str,
        task: str,
        check: Check | None = None,
        label: str = "train",
    ) -> tuple[str | None, str | None]:
        """Check and reserve in ONE write transaction: the projected ε (the worst patient group's counted
        steps + `entries`, composed at `delta`) goes to `check`; a reason refuses (nothing is written),
        else `entries` are reserved. Returns (reservation token, None) or (None, reason)."""
        token = secrets.token_hex(16)
        where = _Row("reserve", fingerprint, token, run_id, server_round, 1.0, 1.0, 0, delta, accountant,
                     task, label, _now())  # fmt: skip
        reason = self._checked_append(where, keys, entries, delta, check)
        return (None, reason) if reason is not None else (token, None)

    def settle(self, token: str, entries: list[Entry]) -> None:
        """Replace a reservation by the steps really taken (possibly none), in one transaction."""
        with self._write() as db:
            reserved = db.execute(
                f"SELECT {_COLUMNS} FROM rows WHERE kind = 'reserve' AND ref = ? ORDER BY id LIMIT 1",
                (token,),
            ).fetchone()
            if reserved is None:
                raise PrivacyError(f"{self.path}: no reservation {token} to settle")
            if db.execute("SELECT 1 FROM rows WHERE kind = 'settle' AND ref = ?", (token,)).fetchone():
                raise PrivacyError(f"{self.path}: reservation {token} is already settled")
            base = _Row(*reserved)
            _check_entries(entries, base.delta)
            marker = replace(base, kind="settle", noise_multiplier=1.0, sample_rate=1.0, steps=0,
                             recorded_at=_now())  # fmt: skip
            self._append(db, [*_batches(replace(marker, kind="spend"), entries), marker])

    def spend_within(
        self,
        fingerprint: str,
        keys: list[str] | None,
        run_id: str,
        server_round: int,
        entries: list[Entry],
        delta: float,
        accountant: str,
        task: str,
        label: str = "",
        check: Check | None = None,
        compose_delta: float | None = None,
    ) -> str | None:
        """Record steps already decided (a one-off release), after `check` of the projected ε composed at
        `compose_delta` (default `delta`), in one transaction. Returns the refusal reason or None."""
        where = _Row("spend", fingerprint, "", run_id, server_round, 1.0, 1.0, 0, delta, accountant,
                     task, label, _now())  # fmt: skip
        at = compose_delta if compose_delta is not None else delta
        return self._checked_append(where, keys, entries, at, check)

    def _checked_append(
        self, where: _Row, keys: list[str] | None, entries: list[Entry], at: float, check: Check | None
    ) -> str | None:
        """In ONE write transaction: register the data set's patients, give `check` the projected ε (the
        worst patient group's counted steps + `entries`, composed at `at`) and, unless it returns a
        reason (then nothing but the registration, which holds no steps, is written), append `entries`
        as rows like `where`."""
        _check_entries(entries, where.delta)
        if check is not None:
            _load_accountants()
        with self._write() as db:
            self._register(db, where.fingerprint, keys)
            if check is not None:
                projected = self._worst(db, where.fingerprint, keys, list(entries), at, where.accountant)
                reason = check(projected.epsilon(at, where.accountant))
                if reason is not None:
                    return reason
            self._append(db, _batches(where, entries))
        return None

    # ------------------------------------------------------------------ tamper evidence and secrets

    def verify(self) -> str | None:
        """The first problem of the hash chain, the head file or the patient lists, or None when intact."""
        with self._db() as db:
            found = db.execute(f"SELECT id, {_COLUMNS}, prev_hash, row_hash FROM rows ORDER BY id").fetchall()
            members: dict[str, list[str]] = {}
            for fp, patient in db.execute("SELECT fingerprint, patient FROM members"):
                members.setdefault(fp, []).append(patient)
        prev, previous_id = _GENESIS, 0
        registered: set[str] = set()
        for row_id, *values, prev_hash, row_hash in found:
            row = _Row(*values)
            if prev_hash != prev:
                return (
                    f"row {row_id}: its prev_hash does not match row {previous_id or '(start)'}: a row "
                    "between them was deleted or changed"
                )
            if _row_hash(prev, row_id, row) != row_hash:
                return f"row {row_id}: content does not match its row_hash (the row was edited)"
            if row.kind == "register":
                registered.add(row.fingerprint)
            prev, previous_id = row_hash, row_id
        problem = self._check_head(len(found), prev)
        if problem:
            return problem
        for fp in sorted(registered | set(members)):
            if fp not in registered:
                return f"data set {fp[:16]}: patient list present but never registered in the chain"
            if dataset_identity(members.get(fp, [])) != fp:
                return f"data set {fp[:16]}: its patient list was changed (no longer hashes to its identity)"
        return None

    def _check_head(self, count: int, last: str) -> str | None:
        if not self.head_path.is_file():
            return None if count == 0 else f"{self.head_path}: missing (the ledger has {count} rows)"
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            rows, last_hash = int(head["rows"]), str(head["last-hash"])
        except (ValueError, KeyError, TypeError):
            return f"{self.head_path}: unreadable (expected JSON with rows and last-hash)"
        if count < rows:
            return (
                f"row {count + 1}: missing (truncated): the head records {rows} rows, the ledger has {count}"
            )
        if count > rows or last_hash != last:
            return f"{self.head_path}: records {rows} rows ending in {last_hash[:16]}, the chain does not"
        return None

    def site_secret(self) -> bytes:
        """The site's random key beside the ledger (created 0600 on first use; never leaves the site)."""
        path = self.path.with_name(SECRET_FILE)
        if not path.exists():
            tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)  # atomic, and never replaces a key another process made first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = path.read_bytes()
        if len(key) < 32:
            raise ConfigError(f"{path}: site key is {len(key)} bytes, expected 32")
        return key


_PROCESS_KEY = secrets.token_bytes(32)


def keyed_fingerprint(identity: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 of a data-set identity under the site key (default: a random key of this process),
    so a coordinator cannot test which patients a site holds by hashing candidate rows."""
    return hmac.new(key or _PROCESS_KEY, identity.encode(), hashlib.sha256).hexdigest()


def _load_accountants() -> None:
    """Import Opacus before a write transaction starts, so its seconds of loading hold no lock."""
    from opacus.accountants import create_accountant  # noqa: F401
