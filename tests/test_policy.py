"""The site policy file and the per-round check that turns a bad round into a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedward.client.policy import SitePolicy, check_round, load_policy, validate_policy_for
from fedward.common.errors import ConfigError, PrivacyError

POLICY = """
[policy]
epsilon-cap = 8.0
delta = 1e-4
min-noise-multiplier = 0.8
clipping-min = 0.1
clipping-max = 5
allowed-tasks = ["ckd"]
min-samples = 100
"""

GOOD_ROUND = {
    "task": "ckd",
    "num_samples": 1000,
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "delta": 1e-4,
    "projected_epsilon": 2.0,
}


@pytest.fixture()
def policy(tmp_path: Path) -> SitePolicy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)


def _load(tmp_path: Path, text: str) -> SitePolicy:
    path = tmp_path / "site-policy.toml"
    path.write_text(text)
    return load_policy(path)


def test_valid_policy_loads(policy: SitePolicy) -> None:
    assert policy.epsilon_cap == 8.0
    assert policy.delta == 1e-4
    assert policy.min_noise_multiplier == 0.8
    assert (policy.clipping_min, policy.clipping_max) == (0.1, 5.0)
    assert policy.allowed_tasks == ["ckd"]
    assert policy.min_samples == 100
    assert check_round(policy, **GOOD_ROUND) is None


def test_min_noise_multiplier_defaults_to_zero(tmp_path: Path) -> None:
    policy = _load(tmp_path, POLICY.replace("min-noise-multiplier = 0.8\n", ""))
    assert policy.min_noise_multiplier == 0.0
    assert check_round(policy, **{**GOOD_ROUND, "noise_multiplier": 0.3}) is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (POLICY.replace("epsilon-cap = 8.0\n", ""), "epsilon-cap"),  # missing
        (POLICY + "epsilon-budget = 3\n", "epsilon-budget"),  # unknown
        (POLICY.replace("delta = 1e-4", "delta = 1.5"), "delta"),
        (POLICY.replace("min-samples = 100", 'min-samples = "100"'), "min-samples"),
        (POLICY.replace("clipping-max = 5", "clipping-max = 0.05"), "clipping-max"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "site-policy.toml" in str(info.value)
    assert field in str(info.value)


def test_missing_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"missing \[policy\] table"):
        _load(tmp_path, "")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(tmp_path, "[policy\n")


def test_policy_delta_above_one_over_n_is_rejected(policy: SitePolicy) -> None:
    validate_policy_for(policy, 9_999)  # δ = 1e-4 < 1/n
    for n in (10_000, 20_000):  # δ = 1/n is refused too: it may amount to leaking one patient
        with pytest.raises(PrivacyError, match="not below 1/n"):
            validate_policy_for(policy, n)


def test_round_delta_above_one_over_n_or_policy_is_refused(policy: SitePolicy) -> None:
    reason = check_round(policy, **{**GOOD_ROUND, "num_samples": 200, "delta": 1e-2})
    assert reason is not None and "1/n" in reason and "0.01" in reason
    reason = check_round(policy, **{**GOOD_ROUND, "delta": 5e-4})
    assert reason is not None and "policy delta" in reason and "0.0001" in reason


def test_noise_below_minimum_is_refused(policy: SitePolicy) -> None:
    reason = check_round(policy, **{**GOOD_ROUND, "noise_multiplier": 0.5})
    assert reason is not None and "0.5" in reason and "minimum 0.8" in reason
    reason = check_round(policy, **{**GOOD_ROUND, "noise_multiplier": 0.0})
    assert reason is not None and "without noise" in reason


def test_projected_epsilon_over_cap_is_refused(policy: SitePolicy) -> None:
    assert check_round(policy, **{**GOOD_ROUND, "projected_epsilon": 8.0}) is None  # the cap itself is fine
    reason = check_round(policy, **{**GOOD_ROUND, "projected_epsilon": 8.5})
    assert reason is not None and "cap of 8" in reason and "8.5" in reason
    assert check_round(policy, **{**GOOD_ROUND, "projected_epsilon": float("nan")}) is not None


def test_other_rules_are_refused_and_all_reasons_reported(policy: SitePolicy) -> None:
    reason = check_round(
        policy, **{**GOOD_ROUND, "task": "brain-mri", "num_samples": 50, "max_grad_norm": 10.0}
    )
    assert reason is not None
    assert "'brain-mri' is not allowed" in reason
    assert "fewer training patients" in reason and "minimum of 100" in reason
    assert "50" not in reason  # the reason goes to the coordinator: never the site's exact size
    assert "10" in reason and "[0.1, 5]" in reason
    assert reason.count(";") == 2
