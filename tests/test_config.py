"""Run config: pyproject defaults and the code's defaults agree; bad keys are named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_defaults_match_run_config() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_flower()


def test_unknown_and_invalid_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="num-rounds"):
        RunConfig.from_flower({"num-rounds": 3})
    with pytest.raises(ConfigError, match="batch-size"):
        RunConfig.from_flower({"batch-size": 0})
