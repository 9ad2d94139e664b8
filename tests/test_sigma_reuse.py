"""σ calibrated for a run is kept in the site's run state: a later train message in a fresh process (or a
resumed run's fresh context) reuses it without an accountant run; changed inputs recalibrate."""

from __future__ import annotations

from pathlib import Path

from flwr.app import RecordDict

from fedward.client.budget import CALIBRATION_STATE, SiteBudget, SitePrivacy
from fedward.client.run_state import SiteRunState
from fedward.common import privacy
from fedward.common.config import RunConfig
from fedward.common.dp_release import release_entry
from fedward.common.privacy import calibration_key

SPENT = (release_entry(6.0),)  # the run drew its statistics release: σ is calibrated after it


def _fresh_process() -> None:
    """Forget every per-process calibration and composition, as a new ClientApp process starts."""
    privacy._calibrate.cache_clear()
    privacy._calibrate_after.cache_clear()
    privacy._compose.cache_clear()


def _config(target: float) -> RunConfig:
    return RunConfig(num_server_rounds=3, dp_target_epsilon=target, dp_accountant="rdp", batch_size=16)


def test_a_fresh_process_reuses_the_runs_sigma_and_a_new_target_recalibrates(tmp_path: Path) -> None:
    budget = SiteBudget(SitePrivacy(), None)
    run_state = SiteRunState(tmp_path / "state", "run-1", "privacy")
    first = RecordDict()
    plan = budget.plan(_config(3.0), 100, spent=SPENT, state=first)
    assert plan is not None and CALIBRATION_STATE in first.config_records
    run_state.save(first, 1)

    _fresh_process()  # round 2: a new process and a fresh context, filled from the site's state dir
    second = RecordDict()
    assert SiteRunState(tmp_path / "state", "run-1", "privacy").restore(second, 2)
    again = budget.plan(_config(3.0), 100, spent=SPENT, state=second)
    assert again == plan
    assert privacy.composition_cache_info().misses == 0  # no accountant ran

    changed = budget.plan(_config(2.0), 100, spent=SPENT, state=second)
    assert changed is not None and changed.noise_multiplier > plan.noise_multiplier
    assert privacy.composition_cache_info().misses > 0  # recalibrated
    assert list(second[CALIBRATION_STATE].values()) == [changed.noise_multiplier]  # only the current σ


def test_every_input_of_the_calibration_is_part_of_its_key() -> None:
    budget = SiteBudget(SitePrivacy(), None)
    state = RecordDict()
    base = budget.plan(_config(3.0), 100, spent=SPENT, state=state)
    assert base is not None
    variants = {
        "delta": (RunConfig(**{**_config(3.0).model_dump(), "dp_delta": 1e-4}), 100, SPENT),
        "sample rate and steps": (_config(3.0), 200, SPENT),
        "rounds": (RunConfig(**{**_config(3.0).model_dump(), "num_server_rounds": 6}), 100, SPENT),
        "releases": (_config(3.0), 100, ()),
    }
    for what, (config, n, spent) in variants.items():
        reuse = RecordDict()
        reuse[CALIBRATION_STATE] = state[CALIBRATION_STATE]
        fresh = budget.plan(config, n, spent=spent)
        assert budget.plan(config, n, spent=spent, state=reuse) == fresh, what
        assert fresh != base, what
    prv = RunConfig(**{**_config(3.0).model_dump(), "dp_accountant": "prv"})  # (PRV's bisection: seconds)
    assert calibration_key(prv.privacy, 1e-3, 0.1, 30, SPENT) != calibration_key(
        _config(3.0).privacy, 1e-3, 0.1, 30, SPENT
    )
