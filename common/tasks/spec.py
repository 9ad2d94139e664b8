"""What the rest of fedward knows about a task without building it: a light `TaskSpec` (no torch).

The CLI, the site check and the report code read the spec; only training and evaluation build the heavy
`Task` (common/tasks/base.py) through the spec's factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fedward.common.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from fedward.common.tasks.base import SiteData, Task

CLASSIFICATION_METRICS = ("accuracy", "roc-auc", "sensitivity", "specificity", "f1")


def _no_classes(run_config: Mapping[str, Any]) -> tuple[str, ...] | None:
    return None


@dataclass(frozen=True)
class CardText:
    """The model card's task-specific sentences (server/report/model_card.py)."""

    predicts: str  # "predicts" row of the overview
    use: str  # what the model may support, in the intended-use section
    simulated_source: str = ""  # what simulated sites (run config `data-root`) hold; "" = the sites' own
    synthetic: bool = False  # simulated sites hold synthetic data: the card says its metrics mean little
    # the "predicts" row as a function of the kebab-case run config, when a setting changes it
    predicts_for: Callable[[Mapping[str, Any]], str] | None = None

    def what(self, run_config: Mapping[str, Any]) -> str:
        """What the model predicts under `run_config`."""
        return self.predicts_for(run_config) if self.predicts_for else self.predicts


@dataclass(frozen=True)
class TaskSpec:
    """One task as the rest of fedward sees it.

    `factory` builds the heavy Task: a "module:Class" string (imported on first use) or a callable.
    `class_names` maps the kebab-case run config to the class names in label order (None: no per-case
    class, e.g. segmentation); `labels` returns a classification site's train and held-out labels.
    """

    name: str
    factory: str | Callable[[], Task]
    card: CardText
    metrics: tuple[str, ...] = (*CLASSIFICATION_METRICS, "loss")  # a study may rank by these
    columns: tuple[str, ...] = CLASSIFICATION_METRICS  # result-table columns
    primary_metric: str = "accuracy"  # the metric tables and cross-site matrices show first
    class_names: Callable[[Mapping[str, Any]], tuple[str, ...] | None] = _no_classes
    labels: Callable[[SiteData], tuple[np.ndarray, np.ndarray]] | None = None
    unit: Literal["rows", "patients"] = "patients"  # what one sample is, in messages to a site
    imaging: bool = False  # MRI folders: the DICOM PHI gate runs before the loader
    models: tuple[str, ...] = ()  # the run config `model` values it accepts
    training_defaults: Mapping[str, Any] = field(default_factory=dict)  # scenario [training] defaults

    def build(self) -> Task:
        """A fresh Task (imports the implementation on first use)."""
        if callable(self.factory):
            return self.factory()
        module, _, attr = self.factory.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"task {self.name!r}: factory {self.factory!r} is not importable; expected 'module:Class'"
            ) from exc
        return cls()
