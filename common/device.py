"""Pick the compute device: CUDA when present, overridable by config or FEDWARD_DEVICE."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedward.common.errors import ConfigError

if TYPE_CHECKING:
    import torch

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def cuda_present() -> bool:
    """Whether this machine has a usable CUDA GPU, without importing torch when it is not loaded yet
    (the NVIDIA driver's presence; torch's own answer once torch is imported)."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return NVIDIA_DRIVER.is_file()


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` (default) takes CUDA when available, else CPU; `cpu`, `cuda` or `cuda:N` force one.

    The environment variable FEDWARD_DEVICE overrides `auto`, so a site can pin its node without
    touching the run config.
    """
    import torch

    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = os.environ.get("FEDWARD_DEVICE", "auto").strip().lower() or "auto"
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(choice)
    except RuntimeError as exc:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {requested!r}") from exc
