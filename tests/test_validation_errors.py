"""The one wording of pydantic validation errors (common/validation_errors.py), on a small real model."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.validation_errors import KeyedValueError, validation_problems


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    epsilon_cap: float = Field(alias="epsilon-cap", gt=0)
    units: dict[str, str] = {}

    @field_validator("units")
    @classmethod
    def _known(cls, units: dict[str, str]) -> dict[str, str]:
        for key in units:
            if key != "sc":
                raise KeyedValueError(key, "not a numeric column")
        return units

    @model_validator(mode="after")
    def _whole(self) -> _Table:
        if self.epsilon_cap == 7:
            raise ValueError("seven is not allowed")
        return self


def _problems(document: dict, **options: object) -> list[str]:
    with pytest.raises(ValidationError) as info:
        _Table.model_validate(document)
    return validation_problems(info.value, **options)  # type: ignore[arg-type]


def test_each_kind_of_error_names_its_key() -> None:
    assert _problems({"epsilon-cap": 0}) == ["epsilon-cap: Input should be greater than 0 (got 0)"]
    assert _problems({}) == ["epsilon-cap: required key is missing"]
    assert _problems({"epsilon-cap": 1, "colour": 1}) == ["colour: unknown key"]
    assert _problems({"epsilon-cap": 1, "units": {"htn": "x"}}) == ["units.htn: not a numeric column"]
    # a model-level error has no key: it says so instead of repeating the whole document
    assert _problems({"epsilon-cap": 7}) == ["(top level): Value error, seven is not allowed"]


def test_prefix_origin_and_unknown_key_text() -> None:
    assert _problems({}, prefix="policy") == ["policy.epsilon-cap: required key is missing"]
    assert _problems({}, origin={"epsilon-cap": "privacy.cap"}) == ["privacy.cap: required key is missing"]
    assert _problems({"epsilon-cap": 1, "x": 0}, unknown_key="unknown key (expected epsilon-cap)") == [
        "x: unknown key (expected epsilon-cap)"
    ]


def test_run_config_errors_use_the_same_wording() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flower({"num-server-rounds": 0})
    assert str(info.value).startswith("invalid run config: num-server-rounds: ")
    assert str(info.value).endswith("(got 0)")
