"""What code made a run: package versions and, when the source is a git checkout, its commit."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedward", "flwr", "torch", "opacus", "monai", "safetensors", "cryptography")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the fedward source tree; (None, None) when
    the code does not run from its own git checkout (an installed wheel, a Flower app bundle) or git is
    missing. Never raises."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE_ROOT:
        return None, None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None and commit else None)


def software() -> dict[str, str | bool | None]:
    """Versions of fedward, Python and the main libraries, with the git commit when known."""
    commit, dirty = git_state()
    info: dict[str, str | bool | None] = {name: package_version(name) for name in PACKAGES}
    info.update({"python": platform.python_version(), "git-commit": commit, "git-dirty": dirty})
    return info
