"""The ledger is keyed on patients: re-exporting, renaming or growing a data set keeps its spent ε."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from mri_helpers import CONTRASTS, make_site
from site_policy import policy_text

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.client.ledger import LEDGER_FILE, PrivacyLedger, dataset_identity
from fedward.common.config import RunConfig
from fedward.common.privacy import PrivacyHistory
from fedward.common.tasks import get_task
from fedward.common.tasks.base import SiteData, SiteSource
from fedward.common.tasks.ckd import CkdTask

POLICY = policy_text(50.0, ledger_dir="ledger")
CONFIG = RunConfig(dp_noise_multiplier=1.0, dp_accountant="rdp", num_server_rounds=1, device="cpu")


def _load(folder: Path) -> SiteData:
    return CkdTask().load_site(SiteSource("site-a", folder), CONFIG)


def _export(frame: pd.DataFrame, folder: Path, name: str = "labs.csv", **kwargs) -> SiteData:
    folder.mkdir(parents=True)
    frame.to_csv(folder / name, index=False, **kwargs)
    return _load(folder)


def _spent(settings: SitePrivacy, site: SiteData) -> float:
    return SiteBudget(settings, site).history(PrivacyHistory()).epsilon(1e-3, "rdp")


@pytest.fixture()
def rows(ckd_csv: Path) -> pd.DataFrame:
    """120 rows of the shipped table, as text (the way an export holds them)."""
    return pd.read_csv(ckd_csv, dtype=str, keep_default_na=False).iloc[:120].reset_index(drop=True)


@pytest.fixture()
def settings(tmp_path: Path) -> SitePrivacy:
    policy = tmp_path / "policy" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text(POLICY)
    return SitePrivacy(tmp_path / "state", policy)


def _train_one_round(settings: SitePrivacy, site: SiteData) -> float:
    budget = SiteBudget(settings, site)
    plan = budget.plan(CONFIG, site.num_train)
    assert budget.reserve(CONFIG, plan, site.num_train, PrivacyHistory(), "run-1", 1) is None
    budget.settle(plan.entries)
    return _spent(settings, site)


def test_reexports_of_the_same_patients_keep_the_spent_epsilon(
    tmp_path: Path, rows: pd.DataFrame, settings: SitePrivacy
) -> None:
    original = _export(rows, tmp_path / "v1")
    assert len(original.patient_keys) == 120 and len(set(original.patient_keys)) > 100
    spent = _train_one_round(settings, original)
    assert spent > 0
    assert (tmp_path / "policy" / "ledger" / LEDGER_FILE).is_file()  # where the policy says
    assert not (tmp_path / "state" / LEDGER_FILE).exists()

    renamed = _export(rows, tmp_path / "v2", name="export-2024.csv")
    crlf = _export(rows, tmp_path / "v3", lineterminator="\r\n")
    shuffled = _export(rows[list(reversed(rows.columns))].sample(frac=1.0, random_state=3), tmp_path / "v4")
    si = rows.rename(columns={"sc": "Creatinine (µmol/L)", "hemo": "Hb (g/L)"})
    si["Creatinine (µmol/L)"] = pd.to_numeric(rows["sc"], errors="coerce").map(
        lambda v: "" if pd.isna(v) else repr(v * 88.42)
    )
    si["Hb (g/L)"] = pd.to_numeric(rows["hemo"], errors="coerce").map(
        lambda v: "" if pd.isna(v) else repr(v * 10)
    )
    other_units = _export(si, tmp_path / "v5")
    assert other_units.report["values-converted"] > 100
    for variant in (renamed, crlf, shuffled, other_units):
        assert sorted(variant.patient_keys) == sorted(original.patient_keys)
        assert _spent(settings, variant) == pytest.approx(spent, rel=1e-12)

    grown = _export(pd.concat([rows, rows.iloc[[0]].assign(age="33")]), tmp_path / "v6")
    assert SiteBudget(settings, grown).fingerprint != SiteBudget(settings, original).fingerprint
    assert _spent(settings, grown) == pytest.approx(spent, rel=1e-12)  # its old patients have spent it

    elsewhere = SitePrivacy(tmp_path / "another-state", settings.policy_file)  # --state moved: same ledger
    assert _spent(elsewhere, original) == pytest.approx(spent, rel=1e-12)


def test_disjoint_data_set_starts_at_zero_and_overlap_composes_per_patient(
    tmp_path: Path, rows: pd.DataFrame, settings: SitePrivacy
) -> None:
    first = _export(rows.iloc[:60], tmp_path / "a")
    second = _export(rows.iloc[60:], tmp_path / "b")
    one = _train_one_round(settings, first)
    assert _spent(settings, second) == 0.0
    _train_one_round(settings, second)
    assert _spent(settings, second) == pytest.approx(one, rel=0.05)  # n and q differ a little
    both = _export(rows, tmp_path / "ab")  # each patient was in one round only: max, not the sum
    assert _spent(settings, both) == pytest.approx(max(one, _spent(settings, second)), rel=1e-12)
    _train_one_round(settings, both)
    # the first 60 patients composed two rounds (first, both): more than one round, and what `both` spent
    assert _spent(settings, first) > 1.1 * one
    assert _spent(settings, first) == pytest.approx(_spent(settings, both), rel=1e-12)


def test_ledger_groups_patients_by_the_data_sets_they_belong_to(tmp_path: Path) -> None:
    from fedward.common.privacy import compose_epsilon

    ledger = PrivacyLedger(tmp_path)
    a, b = ["p1", "p2"], ["p2", "p3"]
    ledger.record(dataset_identity(a), "r", 1, [(1.0, 0.5, 10)], 1e-5, "rdp", "ckd", keys=a)
    ledger.record(dataset_identity(b), "r", 1, [(1.0, 0.5, 30)], 1e-5, "rdp", "ckd", keys=b)
    # p2 is in both: 40 steps composed, more than either data set's own steps
    both = compose_epsilon([(1.0, 0.5, 40)], 1e-5, "rdp")
    assert ledger.spent(dataset_identity(a), 1e-5, "rdp") == pytest.approx(both)
    assert ledger.spent(dataset_identity(["p1"]), 1e-5, "rdp", keys=["p1"]) == pytest.approx(
        compose_epsilon([(1.0, 0.5, 10)], 1e-5, "rdp")
    )
    assert ledger.spent(dataset_identity(["p9"]), 1e-5, "rdp", keys=["p9"]) == 0.0


def test_mri_keys_are_one_per_pseudonymous_patient_whatever_the_folder(tmp_path: Path) -> None:
    config = RunConfig(task="tumour", mri_contrasts=",".join(CONTRASTS), image_size=32, image_depth=8)
    folder = make_site(tmp_path, "dicom", patients=4, studies=2)
    site = get_task("tumour").load_site(SiteSource("s", folder), config)
    patients = set(site.train.patients) | set(site.test.patients)
    assert len(site.patient_keys) == len(patients) == 4  # patients with two studies: one key
    moved = shutil.copytree(folder, tmp_path / "renamed-export")
    again = get_task("tumour").load_site(SiteSource("s", moved), config)
    assert again.patient_keys == site.patient_keys
