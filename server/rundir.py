"""The run directory: config.json, metrics.jsonl (one object per round), summary.json, model."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError

if TYPE_CHECKING:
    import torch


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively; numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The round records of a metrics.jsonl, by round; ConfigError naming the line that is not an object
    with an integer `round`."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the run directory")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise ConfigError(f"{path}: line {number}: expected an object with an integer 'round'")
        records.append(record)
    return sorted(records, key=lambda r: r["round"])


def default_run_name(task: str) -> str:
    """`<task>-YYYYmmdd-HHMMSS`."""
    return f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    """Writes one run's outputs under `<runs-dir>/<run-name>/`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, runs_dir: str, run_name: str) -> RunDirectory:
        """Make (or reuse) the directory of a run."""
        return cls(Path(runs_dir).expanduser().resolve() / run_name)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        """Write `payload` as pretty JSON atomically (temp file, then rename)."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")
        tmp.replace(target)
        return target

    def append_round(self, record: dict[str, Any]) -> None:
        """Append one round's record to metrics.jsonl."""
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(json_safe(record), sort_keys=True) + "\n")

    def truncate_rounds(self, last_round: int) -> None:
        """Drop records of rounds after `last_round` (written before a crash, after the checkpoint)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [
            line for line in path.read_text().splitlines() if line and json.loads(line)["round"] <= last_round
        ]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the run directory."""
        return json.loads((self.path / name).read_text())

    def save_model(self, state_dict: dict[str, torch.Tensor], name: str = "model.pt") -> Path:
        import torch

        """Save the global model's state dict."""
        target = self.path / name
        torch.save(state_dict, target)
        return target
