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
