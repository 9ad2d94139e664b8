"""TensorBoard event files of a run: one writer per site plus one for the pooled metrics.

Layout: `<run>/tensorboard/overall/` and `<run>/tensorboard/site/<site>/`, all with the same tags
(`evaluate/<metric>`, `train/<metric>`, `privacy/epsilon`), so TensorBoard draws every site and the
overall value as lines of one chart per metric. Rounds are the steps.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from fedward.server.report.data import is_metric_key, number

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TRAIN_KEYS = ("train-loss", "noise-multiplier")
_ROUND_KEYS = ("round-seconds", "rejected-updates")


def _folder(site: str) -> str:
    """A site id as a folder name (site ids come from site config, so keep them inside the log dir)."""
    name = _UNSAFE.sub("_", site).lstrip(".")
    return name or "_"


class TensorBoardLog:
    """Writes each round's record (a metrics.jsonl object) as scalars; usable live, one round at a time."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, SummaryWriter] = {}

    def _writer(self, name: str) -> SummaryWriter:
        if name not in self._writers:
            self._writers[name] = SummaryWriter(log_dir=str(self.log_dir / name), flush_secs=30)
        return self._writers[name]

    def _scalars(self, writer_name: str, prefix: str, values: dict[str, Any], step: int, keys=None) -> None:
        for key, value in sorted((values or {}).items()):
            x = number(value)
            wanted = key in keys if keys is not None else is_metric_key(key)
            if wanted and math.isfinite(x):
                self._writer(writer_name).add_scalar(f"{prefix}/{key}", x, global_step=step)

    def add_round(self, record: dict[str, Any], *, flush: bool = True) -> None:
        """Log one round: overall and per-site evaluation, per-site training loss, ε per site, timings.
        `flush=False` leaves writing to the writers' 30 s timer (and `close`), as a live run does."""
        step = int(record["round"])
        self._scalars("overall", "evaluate", record.get("overall") or {}, step)
        self._scalars("overall", "round", record, step, keys=_ROUND_KEYS)
        failures = record.get("failures")
        if isinstance(failures, list):
            self._writer("overall").add_scalar("round/failures", float(len(failures)), global_step=step)
        for site, entry in sorted((record.get("sites") or {}).items()):
            folder = f"site/{_folder(site)}"
            self._scalars(folder, "evaluate", (entry or {}).get("evaluate") or {}, step)
            self._scalars(folder, "train", (entry or {}).get("train") or {}, step, keys=_TRAIN_KEYS)
        for site, epsilon in sorted((record.get("epsilon") or {}).items()):
            self._scalars(f"site/{_folder(site)}", "privacy", {"epsilon": epsilon}, step, keys=("epsilon",))
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write pending events to disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every event file."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def write_tensorboard(log_dir: Path, rounds: list[dict[str, Any]]) -> Path:
    """(Re)write the event files of a whole run from its round records; earlier event files are replaced."""
    log_dir = Path(log_dir)
    if log_dir.is_dir():
        for old in log_dir.rglob("events.out.tfevents.*"):
            old.unlink()
    with TensorBoardLog(log_dir) as log:
        for record in rounds:
            log.add_round(record)
    return log_dir
