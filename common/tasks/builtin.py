"""The specs of the tasks fedward ships; registry.py registers them. Light: no torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedward.common.data.ckd_schema import LABEL_NEGATIVE, LABEL_POSITIVE
from fedward.common.data.mri.sample import CLASSES
from fedward.common.tasks.spec import CardText, TaskSpec

if TYPE_CHECKING:
    from fedward.common.tasks.base import SiteData

_IMAGING_TRAINING = {"local_epochs": 40, "batch_size": 4, "lr": 0.002, "optimizer": "adam"}
_PHANTOMS = "**synthetic brain phantoms** made by `fedward sim tumour` (no patient data)"
_UCI_CKD = (
    "the public UCI Chronic Kidney Disease table (400 patients of Apollo Hospitals, Tamil Nadu, India, "
    "collected over about two months; Rubini et al. 2015) split into simulated sites by `fedward sim ckd`"
)


def _ckd_labels(site: SiteData) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(site.train.y), np.asarray(site.test.y)


def _tumour_labels(site: SiteData) -> tuple[np.ndarray, np.ndarray]:
    return site.train.targets.numpy(), site.test.targets.numpy()


def _tumour_classes(run_config: Mapping[str, Any]) -> tuple[str, ...]:
    return ("no tumour", "tumour") if run_config.get("tumour-binary") else CLASSES


def _tumour_predicts(run_config: Mapping[str, Any]) -> str:
    if run_config.get("tumour-binary"):
        return "whether a brain MRI study shows a tumour"
    return "the tumour class of a brain MRI study (glioma, meningioma, pituitary tumour or no tumour)"


def _pipeline_predicts(run_config: Mapping[str, Any]) -> str:
    return _tumour_predicts(run_config) + ", from per-tumour features of a segmentation model's mask"


CKD = TaskSpec(
    name="ckd",
    factory="fedward.common.tasks.ckd:CkdTask",
    card=CardText(
        predicts="chronic kidney disease (CKD) or not, from 24 routine laboratory and clinical values of an "
        "adult",
        use="flag patients whose values suggest CKD, for review and confirmatory testing by a clinician",
        simulated_source=_UCI_CKD,
    ),
    class_names=lambda run_config: (LABEL_NEGATIVE, LABEL_POSITIVE),
    labels=_ckd_labels,
    unit="rows",
    models=("logreg", "mlp"),
    training_defaults={"local_epochs": 1, "batch_size": 16, "lr": 0.5, "optimizer": "sgd", "model": "mlp"},
)

TUMOUR = TaskSpec(
    name="tumour",
    factory="fedward.common.tasks.tumour:TumourTask",
    card=CardText(
        predicts=_tumour_predicts({}),
        use="research into multi-site MRI classification; triage suggestions reviewed by a radiologist",
        simulated_source=_PHANTOMS,
        synthetic=True,
        predicts_for=_tumour_predicts,
    ),
    class_names=_tumour_classes,
    labels=_tumour_labels,
    imaging=True,
    models=("cnn", "densenet121", "features"),
    training_defaults={**_IMAGING_TRAINING, "model": "cnn"},
)

TUMOUR_SEG = TaskSpec(
    name="tumour-seg",
    factory="fedward.common.tasks.tumour_seg:TumourSegTask",
    card=CardText(
        predicts="a voxel mask of brain tumour on MRI",
        use="research into multi-site MRI segmentation; draft contours corrected by a radiologist",
        simulated_source=_PHANTOMS,
        synthetic=True,
    ),
    metrics=("dice", "dice-voxels", "hd95"),
    columns=("dice", "dice-voxels", "hd95"),
    primary_metric="dice",
    imaging=True,
    models=("unet", "voxel-features"),
    training_defaults={**_IMAGING_TRAINING, "model": "unet"},
)

TUMOUR_PIPELINE = TaskSpec(
    name="tumour-pipeline",
    factory="fedward.common.tasks.tumour_pipeline:TumourPipelineTask",
    card=CardText(
        predicts=_pipeline_predicts({}),
        use="research into two-stage MRI classification (segment, then classify); reviewed by a radiologist",
        simulated_source=_PHANTOMS,
        synthetic=True,
        predicts_for=_pipeline_predicts,
    ),
    class_names=_tumour_classes,
    labels=_tumour_labels,
    imaging=True,
    models=("mlp",),
    training_defaults={"local_epochs": 20, "batch_size": 8, "lr": 0.01, "optimizer": "adam", "model": "mlp"},
)

BUILTIN = (CKD, TUMOUR, TUMOUR_SEG, TUMOUR_PIPELINE)
