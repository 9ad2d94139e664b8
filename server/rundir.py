"""The run directory: config.json, metrics.jsonl (one object per round), summary.json, model.

The only code that reads and writes these files: the ServerApp writes through `RunDirectory.create`,
reports, resume, export and the simulation commands read through `RunDirectory.existing`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedward.common.errors import ConfigError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"  # the run config, the sites' data reports, preprocessing, run ids
MODEL_FILE = "model.pt"  # the final global model's state dict (torch)
SUMMARY_FILE = "summary.json"  # written once the run ends; its absence means unfinished or crashed
ROUNDS_FILE = "metrics.jsonl"
CROSS_SITE_FILE = "cross-site.json"  # models x sites evaluation (server/cross_site.py, leave-one-out)


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
    """One run's outputs under `<runs-dir>/<run-name>/`: written by the ServerApp, read by everything else."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if create:
            self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, runs_dir: str, run_name: str) -> RunDirectory:
        """Make (or reuse) the directory of a run."""
        return cls(Path(runs_dir).expanduser().resolve() / run_name)

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        """An existing run directory (nothing is created); ConfigError when there is no such folder."""
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such run directory")
        return cls(folder, create=False)

    def has(self, name: str) -> bool:
        """Whether the run directory holds the file `name` (summary.json: the run finished)."""
        return (self.path / name).is_file()

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        """Write `payload` as pretty JSON atomically (temp file, then rename)."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True) + "\n")
        tmp.replace(target)
        return target

    def append_round(self, record: dict[str, Any]) -> None:
        """Append one round's record to metrics.jsonl."""
        with (self.path / ROUNDS_FILE).open("a") as fh:
            fh.write(json.dumps(json_safe(record), sort_keys=True) + "\n")

    def truncate_rounds(self, last_round: int) -> None:
        """Drop records of rounds after `last_round` (written before a crash, after the checkpoint)."""
        path = self.path / ROUNDS_FILE
        if not path.is_file():
            return
        kept = [
            line for line in path.read_text().splitlines() if line and json.loads(line)["round"] <= last_round
        ]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON object file of the run directory; ConfigError naming the file when it is missing, not
        valid JSON or not an object."""
        path = self.path / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: missing from the run directory") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}")
        return value

    def read_optional_json(self, name: str) -> dict[str, Any] | None:
        """`read_json`, or None when the file is absent (summary.json of an unfinished run)."""
        return self.read_json(name) if self.has(name) else None

    def config(self) -> dict[str, Any]:
        """config.json (run config, the sites' data reports, preprocessing, run ids); ConfigError when it is
        missing, as in a folder that is not a fedward run or whose run never started."""
        if not self.has(CONFIG_FILE):
            raise ConfigError(
                f"{self.path} has no {CONFIG_FILE}: not a fedward run directory, or its run never started"
            )
        return self.read_json(CONFIG_FILE)

    def run_config(self) -> dict[str, Any]:
        """config.json's `run-config`: the values the run was started with."""
        run_config = self.config().get("run-config")
        if not isinstance(run_config, dict):
            raise ConfigError(f"{self.path / CONFIG_FILE}: expected a 'run-config' object")
        return run_config

    def rounds(self) -> list[dict[str, Any]]:
        """metrics.jsonl's round records, by round (`read_rounds`)."""
        return read_rounds(self.path / ROUNDS_FILE)

    def drop_summary(self) -> None:
        """Remove summary.json before a resumed run writes a new one."""
        (self.path / SUMMARY_FILE).unlink(missing_ok=True)

    def save_model(self, state_dict: dict[str, torch.Tensor], name: str = MODEL_FILE) -> Path:
        """Save the global model's state dict."""
        import torch

        target = self.path / name
        torch.save(state_dict, target)
        return target
