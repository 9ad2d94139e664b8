"""Tasks: everything task-specific behind one interface."""

from __future__ import annotations

from common.errors import ConfigError
from common.tasks.base import SiteData, SiteSource, Task

TASKS = ("ckd", "tumour", "tumour-seg")


def get_task(name: str) -> Task:
    """The task called `name`."""
    if name == "ckd":
        from common.tasks.ckd import CkdTask

        return CkdTask()
    if name == "tumour":
        from common.tasks.tumour import TumourTask

        return TumourTask()
    if name == "tumour-seg":
        from common.tasks.tumour_seg import TumourSegTask

        return TumourSegTask()
    raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")


__all__ = ["TASKS", "SiteData", "SiteSource", "Task", "get_task"]
