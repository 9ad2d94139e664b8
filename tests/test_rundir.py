"""server/rundir.py: the one reader and writer of run-folder files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedward.common.errors import ConfigError
from fedward.server.rundir import CONFIG_FILE, CROSS_SITE_FILE, ROUNDS_FILE, SUMMARY_FILE, RunDirectory

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {CONFIG_FILE, SUMMARY_FILE, ROUNDS_FILE, CROSS_SITE_FILE}


def test_existing_folder_is_opened_without_creating_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such run directory"):
        RunDirectory.existing(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_written_files_read_back(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.write_json(CONFIG_FILE, {"run-config": {"task": "ckd"}, "sites": {}})
    run.append_round({"round": 2, "loss": float("nan")})
    run.append_round({"round": 1})
    opened = RunDirectory.existing(tmp_path / "run")
    assert opened.run_config() == {"task": "ckd"}
    assert [r["round"] for r in opened.rounds()] == [1, 2]
    assert opened.rounds()[1]["loss"] is None
    assert opened.read_optional_json(SUMMARY_FILE) is None
    run.write_json(SUMMARY_FILE, {"rounds": 2})
    assert opened.has(SUMMARY_FILE)
    opened.drop_summary()
    assert not opened.has(SUMMARY_FILE)


@pytest.mark.parametrize(
    ("text", "problem"),
    [(None, "missing from the run directory"), ("{", "not valid JSON"), ("[1]", "expected a JSON object")],
)
def test_bad_json_file_is_named(tmp_path: Path, text: str | None, problem: str) -> None:
    if text is not None:
        (tmp_path / SUMMARY_FILE).write_text(text)
    with pytest.raises(ConfigError) as info:
        RunDirectory.existing(tmp_path).read_json(SUMMARY_FILE)
    assert str(info.value).startswith(f"{tmp_path / SUMMARY_FILE}: {problem}")


def test_folder_without_config_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no config\.json: not a fedward run directory"):
        RunDirectory.existing(tmp_path).run_config()
    (tmp_path / CONFIG_FILE).write_text('{"sites": {}}')
    with pytest.raises(ConfigError, match="expected a 'run-config' object"):
        RunDirectory.existing(tmp_path).run_config()


def test_no_other_module_names_a_run_file() -> None:
    """Run-folder files are reached through server/rundir.py only (its constants and methods)."""
    found = []
    for package in ("server", "simulations", "fedward", "client", "common", "strategies"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "server" / "rundir.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert found == []
