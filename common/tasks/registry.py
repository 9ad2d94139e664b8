"""The task registry: the one place that maps a task name to its spec and its Task.

`register_task(spec)` adds a task (fedward's own are in builtin.py); `task_spec(name)` returns the light
spec, `get_task(name)` a fresh heavy Task. `TASKS` is a live view of the registered names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from fedward.common.errors import ConfigError
from fedward.common.tasks.builtin import BUILTIN
from fedward.common.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from fedward.common.tasks.base import Task

_REGISTRY: dict[str, TaskSpec] = {}


class _Names(Sequence[str]):
    """The registered task names, in registration order (a live view)."""

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_REGISTRY))

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


TASKS: Sequence[str] = _Names()


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add `spec` under `spec.name`; a name already taken is a ConfigError unless `replace`."""
    if not spec.name or spec.name != spec.name.strip():
        raise ConfigError(f"task spec: name {spec.name!r} must be a non-empty word")
    if spec.name in _REGISTRY and not replace:
        raise ConfigError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove the task `name` (tests and plug-ins that registered one)."""
    _REGISTRY.pop(name, None)


def task_spec(name: str) -> TaskSpec:
    """The spec of the task called `name` (ConfigError naming the registered tasks otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(_REGISTRY)}") from None


def get_task(name: str) -> Task:
    """A fresh Task called `name`."""
    return task_spec(name).build()


for _spec in BUILTIN:
    register_task(_spec)
