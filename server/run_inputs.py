"""A task's inputs from earlier runs (the tumour pipeline's segmenter), read through the run folder and
checked: the run named by each of the task's `input_runs` keys exists, is of the expected task, carries
its exported model, and its signed provenance verifies with this coordinator's key."""

from __future__ import annotations

from pathlib import Path

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks.base import InputRun, RunInputs, Task
from fedward.server.export import SAFETENSORS_WEIGHTS, load_exported
from fedward.server.provenance.manifest import verify_run
from fedward.server.provenance.signing import load_private_key
from fedward.server.rundir import RunDirectory


def _input_run(key: str, value: str, wanted: str, task: str) -> InputRun:
    if not value.strip():
        raise ConfigError(f"{key}: empty; the {task} task needs the folder of a finished {wanted} run")
    folder = Path(value).expanduser().resolve()
    try:
        run_config = RunDirectory.existing(folder).run_config()
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}; expected the folder of a finished {wanted} run") from None
    if run_config.get("task") != wanted:
        raise ConfigError(f"{key}: {folder} is a {run_config.get('task')!r} run; expected a {wanted} run")
    weights = folder / SAFETENSORS_WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{key}: {weights} missing; expected a finished {wanted} run (it exports it)")
    state, _ = load_exported(weights)
    return InputRun(folder, run_config, state)


def load_run_inputs(task: Task, config: RunConfig, signing_key: Path) -> RunInputs:
    """The task's run inputs, each source run's provenance verified against the coordinator's key
    `signing_key`; ConfigError naming the run-config key otherwise. Nothing is read without inputs."""
    if not task.input_runs:
        return task.run_inputs(config, {})
    values = config.to_flower()
    runs = {
        key: _input_run(key, str(values.get(key, "")), wanted, task.name)
        for key, wanted in task.input_runs.items()
    }
    inputs = task.run_inputs(config, runs)
    public = load_private_key(signing_key).public_key()
    for key, run in runs.items():
        result = verify_run(run.folder, public)
        if not result.ok:
            raise ConfigError(f"{key}: {run.folder} fails its provenance check: {'; '.join(result.problems)}")
    return inputs
