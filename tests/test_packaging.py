"""The installed distribution and the import graph: one import name, dependencies pointing one way."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ("common", "server", "client", "strategies", "simulations")
# concept -> the concepts it must never import (docs/architecture.md, "Packages and their direction")
FORBIDDEN = {
    "common": {"server", "client", "strategies", "simulations", "cli"},
    "strategies": {"server", "client", "simulations", "cli"},
    "client": {"server", "strategies", "simulations", "cli"},
    "server": {"client", "simulations", "cli"},
}


def _imported(path: Path) -> set[str]:
    """The modules a file imports, absolute names (fedward's own are `fedward.<concept>...`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_dependencies_point_one_way_and_only_through_the_fedward_name() -> None:
    broken: list[str] = []
    for concept, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / concept).rglob("*.py")):
            for name in _imported(path):
                parts = name.split(".")
                if parts[0] in CONCEPTS:
                    broken.append(f"{path.relative_to(ROOT)} imports {name} (not through `fedward.`)")
                elif parts[0] == "fedward" and len(parts) > 1 and parts[1] in forbidden:
                    broken.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not broken, "\n".join(broken)


def _source_copy(tmp: Path) -> Path:
    """The files a build reads, copied, so the build leaves nothing in the checkout."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (*CONCEPTS, "fedward"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    return src


@pytest.mark.slow
def test_the_wheel_installs_one_import_name_that_loads_without_the_checkout(tmp_path: Path) -> None:
    """Nothing generic (`common`, `server`, `client`, ...) lands in site-packages; the wheel alone runs."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(_source_copy(tmp_path))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fedward-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fedward"}
    sources = {
        f"fedward/{p.relative_to(ROOT).as_posix()}" for c in CONCEPTS for p in (ROOT / c).rglob("*.py")
    }
    assert sources <= set(names), sorted(sources - set(names))[:5]
    assert "fedward/common/datasets/ckd/chronic_kidney_disease.csv" in names

    probe = (
        "import fedward, fedward.server.app, fedward.client.app, fedward.simulations.cli\n"
        "from fedward.common.datasets import ckd_csv_path\n"
        "print(fedward.__path__[:], fedward.server.app.__file__, fedward.client.app.__file__,"
        " ckd_csv_path())\n"
        "import importlib.util\n"
        "print([n for n in ('common', 'server', 'client', 'strategies', 'simulations') "
        "if importlib.util.find_spec(n)])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    paths, generic = ran.stdout.strip().splitlines()
    assert str(ROOT) not in paths and paths.count(str(tmp_path / "site")) == 4, paths
    assert generic == "[]"
