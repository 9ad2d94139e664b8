"""For MRI the patient is the DP unit: one training item per patient (a random one of their studies,
drawn from OS entropy), and n, q, δ and the planned steps count patients, not studies."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mri_helpers import CONTRASTS, make_site

from fedward.common.config import RunConfig
from fedward.common.data.mri.patients import PatientSampled
from fedward.common.privacy import resolve_delta
from fedward.common.tasks import SiteData, SiteSource, get_task
from fedward.simulations.baselines import local_baselines

PATIENTS, STUDIES = 8, 3  # patient p has 1 + p % 3 studies: 1, 2, 3, 1, 2, 3, 1, 2
CONFIG = RunConfig(
    task="tumour", mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8, test_fraction=0.25
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("patients"), "dicom", patients=PATIENTS, studies=STUDIES)


@pytest.fixture(scope="module")
def site(folder: Path) -> SiteData:
    return get_task("tumour").load_site(SiteSource("s", folder), CONFIG)


def _studies_of(site: SiteData, patient: str) -> list[int]:
    return [j for j, p in enumerate(site.train.patients) if p == patient]


def _chosen(train: PatientSampled, site: SiteData, index: int) -> int:
    """Which of patient `index`'s studies one access returned (matched by its image)."""
    image, _ = train[index]
    own = _studies_of(site, train.patients[index])
    (hit,) = [j for j in own if torch.equal(image, site.train.images[j])]
    return hit


def _multi_study_patient(train: PatientSampled) -> int:
    return next(i for i, group in enumerate(train.groups) if len(group) == STUDIES)


def test_a_phantom_site_can_give_patients_several_studies(site: SiteData) -> None:
    assert site.report["patients"] == PATIENTS
    assert site.report["samples"] == sum(1 + p % STUDIES for p in range(PATIENTS))
    assert not set(site.train.patients) & set(site.test.patients)


def test_train_has_one_item_per_patient_and_test_one_per_study(site: SiteData) -> None:
    train, test = get_task("tumour").datasets(site, {})
    assert isinstance(train, PatientSampled)
    assert len(train) == site.num_train == site.report["train-patients"] == len(set(site.train.patients))
    assert len(site.train) > len(train)  # some training patients have several studies
    assert len(test) == site.num_test == len(site.test)  # evaluation stays per study
    assert sorted(train.patients) == sorted(set(site.train.patients))
    for i in range(len(train)):
        own = _studies_of(site, train.patients[i])
        assert sorted(train.groups[i]) == own
        assert _chosen(train, site, i) in own
        assert int(train[i][1]) == int(site.train.targets[own[0]])


def test_every_study_of_a_patient_gets_drawn(site: SiteData) -> None:
    train, _ = get_task("tumour").datasets(site, {})
    i = _multi_study_patient(train)
    drawn = {_chosen(train, site, i) for _ in range(60)}  # all 3 seen: fails with odds 3·(2/3)^60
    assert drawn == set(train.groups[i])


def test_draws_use_os_entropy_not_the_config_seed(folder: Path) -> None:
    task = get_task("tumour")
    sequences = []
    for _ in range(2):  # two sites loaded from the same config, every seed reset alike
        site = task.load_site(SiteSource("s", folder), CONFIG)
        train, _ = task.datasets(site, {})
        i = _multi_study_patient(train)
        torch.manual_seed(CONFIG.seed)
        np.random.seed(CONFIG.seed)
        random.seed(CONFIG.seed)
        sequences.append([train.draw(i) for _ in range(64)])
    assert sequences[0] != sequences[1]  # equal with odds 3^-64


def test_one_private_round_counts_patients(site: SiteData) -> None:
    config = CONFIG.model_copy(
        update={"num_server_rounds": 1, "batch_size": 2, "dp_noise_multiplier": 1.0, "dp_accountant": "rdp"}
    )
    result = local_baselines(config, [site], device=torch.device("cpu"))["sites"]["s"]
    patients = len(set(site.train.patients))
    assert result["refused"] is None
    assert result["steps"] == math.ceil(patients / 2)  # Opacus' steps = the plan's, per patient
    assert result["delta"] == resolve_delta(0, patients)  # δ from n = patients, not studies
    assert 0 < result["epsilon"] < math.inf
    assert result["num-examples"] == len(site.test)  # evaluated per study


def test_patient_ids_must_match_the_samples() -> None:
    with pytest.raises(ValueError, match="3 patient ids for 2 samples"):
        PatientSampled(torch.utils.data.TensorDataset(torch.zeros(2)), ["a", "b", "c"])
