"""Whether a site's loaded data can train and be evaluated: what blocks it and what will go badly.

`fedward site check` prints both; a site in a run logs the warnings once when it loads its data. The
findings name counts and rules, never values, and stay at the site.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedward.client.policy import SitePolicy
from fedward.common.config import RunConfig
from fedward.common.tasks import task_spec

if TYPE_CHECKING:
    from fedward.common.tasks import SiteData

MIN_ROWS = 2  # fewer rows in all: nothing to train and evaluate on
MIN_PER_CLASS = 5  # fewer training rows of a class: the model barely sees it


@dataclass
class Readiness:
    """What stops the site from training (`blocking`) and what will make it train or evaluate badly."""

    blocking: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def class_names(task: str, config: RunConfig) -> tuple[str, ...] | None:
    """The task's class names in label order (None for segmentation: no per-case class)."""
    return task_spec(task).class_names(config.to_flower())


def split_labels(site: SiteData, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Training and held-out labels of a classification task's site (None for segmentation)."""
    labels = task_spec(task).labels
    return None if labels is None else labels(site)


def readiness(site: SiteData, task: str, config: RunConfig, policy: SitePolicy | None = None) -> Readiness:
    """Check a loaded site against the run's settings (`config`) and its policy."""
    out = Readiness()
    n, total = site.num_train, site.num_train + site.num_test
    unit = task_spec(task).unit
    if total < MIN_ROWS:
        out.blocking.append(f"{total} usable {unit} in all; a site needs at least {MIN_ROWS} to run")
    elif n == 0:
        out.blocking.append(f"no training {unit}: every usable one is in the held-out split")
    if out.blocking:
        return out
    labels, names = split_labels(site, task), class_names(task, config)
    if labels is not None and names is not None:
        _classes(out, labels, names, unit)
    if site.num_test == 0:
        out.warnings.append(
            f"no held-out {unit}: the site trains but sends an empty evaluation (add a test split or data)"
        )
    if n < config.batch_size:
        out.warnings.append(
            f"{n} training {unit}, fewer than the batch size {config.batch_size}: every step sees the whole "
            "site, and DP noise swamps its few gradients"
        )
    for source, delta in (
        ("site policy", policy.delta if policy else 0.0),
        ("run config dp-delta", config.dp_delta),
    ):
        if delta and delta * n >= 1:
            out.warnings.append(
                f"{source} delta {delta:g} is not below 1/n for n = {n} training {unit}: every private "
                "training round will be refused (set delta < 1/n)"
            )
    return out


def _classes(
    out: Readiness, labels: tuple[np.ndarray, np.ndarray], names: tuple[str, ...], unit: str
) -> None:
    train, test = (np.asarray(x).astype(int) for x in labels)
    counts = np.bincount(train, minlength=len(names))
    present = [names[c] for c in range(len(names)) if counts[c]]
    if len(present) == 1:
        out.warnings.append(
            f"the training split holds one class only ({present[0]}): the site's updates push every "
            "prediction towards it"
        )
    else:
        few = [f"{names[c]} ({int(counts[c])})" for c in range(len(names)) if counts[c] < MIN_PER_CLASS]
        if few:
            out.warnings.append(f"fewer than {MIN_PER_CLASS} training {unit} of class(es) {', '.join(few)}")
    absent = [names[c] for c in range(len(names)) if not np.any(test == c)]
    if len(test) and absent:
        out.warnings.append(
            f"the held-out split holds no {', '.join(absent)}: its ROC AUC is undefined (NaN), and so are "
            "the per-class rates of the missing class(es)"
        )


def missing_contrasts(found: Mapping[str, Collection[str]], contrasts: Sequence[str]) -> dict[str, int]:
    """Per contrast the run asks for, how many patients of `found` (patient -> contrasts the loaders
    recognised in any of their studies) have it in none."""
    return {name: sum(name not in have for have in found.values()) for name in contrasts}


def contrast_readiness(found: Mapping[str, Collection[str]], contrasts: Sequence[str]) -> Readiness:
    """Block when a contrast the run asks for is missing for every patient, warn when for some (counts
    only, no patient id)."""
    out = Readiness()
    asked = ", ".join(contrasts)
    if not found:
        out.warnings.append(
            f"no DICOM series or NIfTI case found, so the contrasts {asked} could not be checked (2D "
            "images have none: a grey-level image fills every input channel)"
        )
        return out
    total = len(found)
    for name, lacking in missing_contrasts(found, contrasts).items():
        if lacking == total:
            out.blocking.append(
                f"contrast {name}: missing for all {total} patients, and the run asks for {asked}; add the "
                f"{name} series (named as in docs/site-data.md) or the site cannot take part"
            )
        elif lacking:
            out.warnings.append(
                f"contrast {name}: missing for {lacking} of {total} patients; their studies without it are "
                "skipped, so they neither train nor evaluate"
            )
    return out
