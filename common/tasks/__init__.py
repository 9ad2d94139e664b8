"""Tasks: everything task-specific behind one interface, found through the registry (registry.py).

Importing this package is light (no torch): `SiteData`, `SiteSource` and `Task` load base.py on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedward.common.tasks.registry import TASKS, get_task, register_task, task_spec, unregister_task
from fedward.common.tasks.spec import CardText, TaskSpec

if TYPE_CHECKING:
    from fedward.common.tasks.base import SiteData, SiteSource, Task

_HEAVY = ("SiteData", "SiteSource", "Task")


def __getattr__(name: str) -> Any:
    if name in _HEAVY:
        from fedward.common.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module 'fedward.common.tasks' has no attribute {name!r}")


__all__ = [
    "TASKS",
    "CardText",
    "SiteData",
    "SiteSource",
    "Task",
    "TaskSpec",
    "get_task",
    "register_task",
    "task_spec",
    "unregister_task",
]
