"""What the two tumour tasks share: reading a site's MRI folder into model-ready tensors, split by patient."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fedward.common.config import RunConfig
from fedward.common.data.mri.patients import PatientSampled
from fedward.common.data.mri.preprocess import model_input
from fedward.common.data.mri.sample import MriSample, ScanResult, SkipFile, Skipped, parse_contrasts
from fedward.common.data.mri.site import scan_site
from fedward.common.data.patient_keys import mri_patient_keys
from fedward.common.data.split import split_by_patient
from fedward.common.errors import ConfigError, DataValidationError
from fedward.common.tasks.base import SiteData, SiteSource, Task

NOTHING_FOUND = "no MRI data found (expected DICOM series, BraTS-style NIfTI cases or class image folders)"
DEFAULT_MODEL = RunConfig.model_fields["model"].default


@dataclass
class MriTensors:
    """Preprocessed samples of one split: images (n, C, ...), targets, patient ids, voxel sizes (mm)."""

    images: torch.Tensor
    targets: torch.Tensor
    patients: list[str]
    voxels: np.ndarray

    def __len__(self) -> int:
        return len(self.patients)

    def subset(self, index: np.ndarray) -> MriTensors:
        """The samples at `index`."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return MriTensors(
            self.images[idx], self.targets[idx], [self.patients[i] for i in index], self.voxels[index]
        )


class MriDataset(TensorDataset):
    """(image, target) pairs; `voxels` holds each sample's voxel size in mm for distance metrics."""

    def __init__(self, tensors: MriTensors) -> None:
        super().__init__(tensors.images, tensors.targets)
        self.voxels = tensors.voxels


def contrasts_of(config: RunConfig) -> tuple[str, ...]:
    """The run's input contrasts (ConfigError when the list is malformed)."""
    try:
        return parse_contrasts(config.mri_contrasts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def model_name(config: RunConfig, allowed: tuple[str, ...], default: str) -> str:
    """The configured model; the run config's default (a tabular model) means this task's default."""
    name = default if config.model == DEFAULT_MODEL else config.model
    if name not in allowed:
        raise ConfigError(f"model {config.model!r} does not fit this task; expected one of {allowed}")
    return name


class MriTask(Task):
    """Load, preprocess (MONAI) and split by patient; subclasses say what a sample's target is."""

    @abstractmethod
    def target(self, sample: MriSample, mask: torch.Tensor | None, config: RunConfig) -> torch.Tensor:
        """The training target of a preprocessed sample; SkipFile when it has none."""

    @abstractmethod
    def stratum(self, target: torch.Tensor) -> int:
        """Class used to stratify the patient split."""

    def load_site(self, source: SiteSource, config: RunConfig) -> SiteData:
        """Every usable sample of the site folder; unusable files are skipped with a reason."""
        return self.site_from_scan(source, config, self.scan(source, config))

    def scan(self, source: SiteSource, config: RunConfig) -> ScanResult:
        """Read the site folder once with the run's contrasts: samples, skip reasons and each patient's
        recognised contrasts (`fedward site check --contrasts` reads those before `site_from_scan`)."""
        if source.data_dir is None:
            raise ConfigError(
                f"site {source.site_id}: the {self.name} task needs a data folder "
                "(node config data-dir, or run config data-root with site-<i> folders)"
            )
        return scan_site(source.data_dir, contrasts_of(config))

    def site_from_scan(self, source: SiteSource, config: RunConfig, scan: ScanResult) -> SiteData:
        """Preprocess and split by patient what `scan` found; DataValidationError when nothing is usable."""
        contrasts = contrasts_of(config)
        skipped = list(scan.skipped)
        images, targets, patients, voxels, strata = [], [], [], [], []
        for sample in scan.samples:
            try:
                image, mask, voxel = model_input(
                    sample, config.image_size, config.image_depth, len(contrasts)
                )
                target = self.target(sample, mask, config)
            except SkipFile as why:
                skipped.append(Skipped(sample.source, str(why)))
                continue
            images.append(image)
            targets.append(target)
            patients.append(sample.patient_id)
            voxels.append(voxel)
            strata.append(self.stratum(target))
        if not images:
            problems = [str(s) for s in skipped] or [NOTHING_FOUND]
            raise DataValidationError(str(source.data_dir), [f"no usable sample for {self.name}", *problems])
        data = MriTensors(torch.stack(images), torch.stack(targets), patients, np.stack(voxels))
        train_idx, test_idx = split_by_patient(
            patients, np.asarray(strata), config.test_fraction, config.seed
        )
        train, test = data.subset(train_idx), data.subset(test_idx)
        report = {
            "files-read": float(scan.files_read),
            "skipped": float(len(skipped)),
            "samples": float(len(data)),
            "patients": float(len(set(patients))),
            "train-patients": float(len(set(train.patients))),
            "test-patients": float(len(set(test.patients))),
        }
        details = [str(s) for s in skipped]
        num_train = len(set(train.patients))  # the DP unit is the patient: n, q and δ count patients
        keys = mri_patient_keys(patients)
        return SiteData(source.site_id, train, test, num_train, len(test), report, details, scan.files, keys)

    def datasets(self, site: SiteData, shared: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Train: one item per patient, a random one of their studies at each access (a patient gives at
        most one clipped gradient per DP-SGD step; without DP an epoch visits each patient once). Test:
        every study. Tensors were prepared at load time (per-sample normalisation needs no shared statistics).
        """
        return PatientSampled(MriDataset(site.train), site.train.patients), MriDataset(site.test)
