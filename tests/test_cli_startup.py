"""The `fedward` command starts without the heavy stack; its help lists what the registry holds."""

from __future__ import annotations

import subprocess
import sys

from fedward.simulations.cli import STRATEGY_NAMES, SWEEP_KEYS
from fedward.simulations.scenario import SWEEP_KEYS as SCENARIO_SWEEP_KEYS
from fedward.strategies.registry import STRATEGIES

HEAVY = ("torch", "sklearn", "pandas", "matplotlib", "scipy", "opacus", "monai", "ray", "pydicom", "flwr")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    probe = (
        "import sys\nfrom fedward.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out[-500:]


def test_help_names_every_registered_strategy_and_sweep_key() -> None:
    assert STRATEGY_NAMES.split(", ") == list(STRATEGIES)
    assert SWEEP_KEYS == SCENARIO_SWEEP_KEYS


def test_the_coordinator_of_a_ckd_run_loads_no_site_side_libraries() -> None:
    """scikit-learn (with pandas and pyarrow behind it, ≈ 140 MB with scipy) serves the sites' splits and
    metrics; the coordinator pools counts (scipy's Wilson interval only), so its process (the simulation's
    driver, a SuperLink's ServerApp) must not load it through the task or the metrics modules."""
    probe = (
        "import sys\nimport fedward.server.app\nfrom fedward.common.tasks import get_task\n"
        "task = get_task('ckd')\nfrom fedward.common.config import RunConfig\n"
        "task.build_model(RunConfig(task='ckd'))\n"
        "task.pool([{'num-examples': 4.0, 'tp': 1.0, 'fp': 1.0, 'tn': 1.0, 'fn': 1.0}])\n"
        "print(sorted(m for m in ('sklearn', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out[-500:]
