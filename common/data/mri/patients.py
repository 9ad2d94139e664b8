"""User-level sampling: one dataset item per patient, each access one of that patient's samples.

DP-SGD bounds what one *item* changes. With one item per patient, Opacus' Poisson sampler draws patients
(rate q) and every clipped per-sample gradient is a patient's: n, q and δ count patients, and a patient
with several studies still contributes at most one gradient per step. Which of the patient's samples an
access returns is drawn uniformly with OS entropy (`random.SystemRandom`), never from a seed, so no one
who knows the run config can tell which study was used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset


def group_by_patient(patients: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """The distinct patient ids (in order of first appearance) and each one's sample indices."""
    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        groups.setdefault(patient, []).append(index)
    return list(groups), list(groups.values())


class PatientSampled(Dataset):
    """`samples` seen per patient: item i is a uniformly random sample of patient i, drawn afresh at
    every access from OS entropy. Without DP an epoch visits every patient once, with a random study."""

    def __init__(self, samples: Dataset, patients: Sequence[str]) -> None:
        if len(samples) != len(patients):  # type: ignore[arg-type]
            raise ValueError(
                f"{len(patients)} patient ids for {len(samples)} samples; expected one per sample"  # type: ignore[arg-type]
            )
        self.samples = samples
        self.patients, self.groups = group_by_patient(patients)
        self._random = random.SystemRandom()

    def __len__(self) -> int:
        return len(self.groups)

    def draw(self, index: int) -> int:
        """The sample index chosen for patient `index` at this access."""
        group = self.groups[index]
        return group[0] if len(group) == 1 else self._random.choice(group)

    def __getitem__(self, index: int) -> Any:
        return self.samples[self.draw(index)]
