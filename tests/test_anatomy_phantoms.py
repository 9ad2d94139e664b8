"""Phantoms on MNI anatomy (simulations/anatomy.py): template from the nilearn wheel, tumour placement by
class, contrasts, reproducibility, unequal site sizes written as DICOM and NIfTI and read back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, map_coordinates
from typer.testing import CliRunner

from fedward.cli import app
from fedward.common.data.mri.sample import CLASSES
from fedward.common.data.mri.site import scan_site
from fedward.simulations import anatomy
from fedward.simulations.phantoms import PhantomSpec, generate_sites, render, scanner

SPEC = PhantomSpec(size=32, slices=16, anatomy="mni")
TISSUE = {name: i for i, name in enumerate(anatomy.TISSUES)}
CONTRAST = {name: i for i, name in enumerate(("t1", "t1ce", "t2", "flair"))}


def _case(label: str, seed: int = 0) -> anatomy.MniCase:
    return anatomy.mni_case(np.random.default_rng(seed), CLASSES.index(label), SPEC)


def _template_at(name: str, mni: np.ndarray) -> np.ndarray:
    """Template map `name` (undeformed, 2 mm) at MNI points (…, 3)."""
    tpl = anatomy.load_template()
    coords = ((np.reshape(mni, (-1, 3)) - tpl.origin) / anatomy.STEP_MM).T
    return map_coordinates(tpl.maps[anatomy.MAPS.index(name)], coords, order=1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_template_comes_from_the_nilearn_wheel_and_a_missing_file_is_named(tmp_path) -> None:
    files = anatomy.template_files()
    assert set(files) == {"t1", "gm", "wm"}
    assert all("nilearn" in path.parts and path.is_file() for path in files.values())
    tpl = anatomy.load_template()
    brain_ml = float((tpl.maps[anatomy.MAPS.index("brain")] >= 0.5).sum()) * anatomy.STEP_MM**3 / 1000
    assert 1200 < brain_ml < 2200  # an adult brain (incl. cerebellum and brainstem), not an empty map
    assert len(tpl.white) > 100 and len(tpl.convexity) > 100
    with pytest.raises(anatomy.TemplateMissing, match=r"mni_icbm152_t1_tal_nlin_sym_09a_converted\.nii\.gz"):
        anatomy.template_files(tmp_path)


def test_a_case_has_the_template_brain_not_an_ellipsoid() -> None:
    case = _case("notumor", seed=1)
    f = case.fractions
    intracranial = (f[TISSUE["grey"]] + f[TISSUE["white"]] + f[TISSUE["csf"]]) >= 0.5
    grid = anatomy.grid_for(SPEC.size, SPEC.slices)
    undeformed = grid.points + anatomy.load_template().centre
    template = _template_at("cavity", undeformed).reshape(intracranial.shape) >= 0.5
    assert _dice(intracranial, template) > 0.85  # deformed, but the template's shape
    # an ellipsoid would fill its bounding ellipsoid; a brain (temporal poles, cerebellum, brainstem) does not
    idx = np.argwhere(intracranial)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    grid_idx = np.indices(intracranial.shape).reshape(3, -1).T
    ellipsoid = ((((grid_idx - (lo + hi) / 2) / ((hi - lo + 1) / 2)) ** 2).sum(axis=1) <= 1).reshape(
        intracranial.shape
    )
    assert (intracranial & ellipsoid).sum() / ellipsoid.sum() < 0.9
    # ventricles: CSF deep inside the brain, skull and scalp only around it
    assert f[TISSUE["csf"]][12:20, 10:22, 7:10].max() > 0.6
    assert (f[TISSUE["skull"]][intracranial] < 0.5).all() and not case.mask.any()


@pytest.mark.parametrize("seed", [0, 3])
def test_glioma_sits_in_hemispheric_white_matter_with_ring_enhancement_and_oedema(seed) -> None:
    case = _case("glioma", seed)
    f, image = case.fractions, case.image
    solid = (f[TISSUE["glioma"]] + f[TISSUE["necrosis"]]) >= 0.5
    assert solid.any() and case.mask[solid].all()
    intracranial = f.sum(axis=0) - f[TISSUE["skull"]]
    assert (intracranial[case.mask.astype(bool)] >= 0.5).all()  # the whole tumour lies inside the brain
    centre = case.mni[solid].mean(axis=0)
    assert abs(centre[0]) > 10  # off the midline
    assert _template_at("wm", case.mni[solid]).mean() > _template_at("gm", case.mni[solid]).mean()
    white = f[TISSUE["white"]] >= 0.9
    rim, core, oedema = (f[TISSUE[t]] >= 0.5 for t in ("glioma", "necrosis", "oedema"))
    assert rim.any() and oedema.sum() > solid.sum()  # wide oedema
    ratio = image[CONTRAST["t1ce"]] / np.maximum(image[CONTRAST["t1"]], 1e-6)
    assert ratio[rim].mean() > 1.8 * ratio[white].mean()  # the rim enhances
    if core.any():
        assert image[CONTRAST["t1ce"]][core].mean() < 0.8 * image[CONTRAST["t1ce"]][rim].mean()  # necrosis
    flair = image[CONTRAST["flair"]]
    assert flair[oedema].mean() > 1.5 * flair[white].mean()


def test_meningioma_is_extra_axial_at_the_convexity_and_enhances() -> None:
    tpl = anatomy.load_template()
    brain_centre = tpl.centre + np.array([0.0, -5.0, 5.0])
    for seed in (0, 1, 2):
        case = _case("meningioma", seed)
        f, mask = case.fractions, case.mask.astype(bool)
        assert mask.any()
        assert ((f.sum(axis=0) - f[TISSUE["skull"]])[mask] >= 0.5).all()  # inside the skull
        assert (binary_dilation(mask) & (f[TISSUE["skull"]] >= 0.3)).any()  # touching it
        centre = case.mni[mask].mean(axis=0)
        assert np.linalg.norm(centre - brain_centre) > 55 and centre[2] > 0  # peripheral, convexity
        tumour = f[TISSUE["meningioma"]] >= 0.5
        grey = f[TISSUE["grey"]] >= 0.6
        t1ce, t1 = case.image[CONTRAST["t1ce"]], case.image[CONTRAST["t1"]]
        assert t1ce[tumour].mean() > 1.5 * t1ce[grey].mean() and t1ce[tumour].mean() > 1.5 * t1[tumour].mean()
        assert f[TISSUE["oedema"]].sum() < f[TISSUE["meningioma"]].sum()  # little oedema


def test_pituitary_tumour_is_midline_inferior_and_enhancing() -> None:
    for seed in (0, 1, 2):
        case = _case("pituitary", seed)
        mask = case.mask.astype(bool)
        centre = case.mni[mask].mean(axis=0)
        assert abs(centre[0]) < 5 and centre[2] < -20  # midline, below the brain (sella)
        assert _template_at("brain", centre)[0] < 0.2
        tumour = case.fractions[TISSUE["pituitary"]] >= 0.5
        t1ce, t1 = case.image[CONTRAST["t1ce"]], case.image[CONTRAST["t1"]]
        assert t1ce[tumour].mean() > 1.5 * t1[tumour].mean()


def test_same_seed_same_case_other_seed_other_case() -> None:
    scan = scanner(1, seed=0)
    spec = PhantomSpec(size=32, slices=16, contrasts=("t1ce", "flair"), anatomy="mni")
    a, b = (render(np.random.default_rng(7), 0, spec, scan) for _ in range(2))
    c = render(np.random.default_rng(8), 0, spec, scan)
    assert a.image.shape == (2, 32, 32, 16) and a.image.dtype == np.float32 and a.mask.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask) and np.abs(a.image - c.image).mean() > 0.02 * scan.scale
    assert np.allclose(
        a.affine, render(np.random.default_rng(7), 0, PhantomSpec(size=32, slices=16), scan).affine
    )


def _labels(site: Path) -> dict[str, str]:
    with (site / "manifest.csv").open() as handle:
        return {row["patient_id"]: row["label"] for row in csv.DictReader(handle)}


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_unequal_mni_sites_load_through_the_mri_loaders(tmp_path, fmt) -> None:
    spec = PhantomSpec(size=32, slices=12, contrasts=("t1ce", "flair"), anatomy="mni")
    folders = generate_sites(tmp_path, 2, (5, 9), fmt=fmt, spec=spec, seed=4)
    for folder, count in zip(folders, (5, 9), strict=True):
        result = scan_site(folder, spec.contrasts)
        labels = _labels(folder)
        assert not result.skipped and len(result.samples) == count == len(labels)
        for sample in result.samples:
            assert CLASSES[sample.label] == labels[sample.patient_id]
            assert sample.image.shape == (2, 32, 32, 12) and sample.mask is not None
            assert bool(sample.mask.any()) == (CLASSES[sample.label] != "notumor")


def test_site_sizes_must_match_the_sites(tmp_path) -> None:
    with pytest.raises(ValueError, match="3 site sizes given for 2 sites"):
        generate_sites(tmp_path, 2, [4, 5, 6])
    result = CliRunner().invoke(
        app, ["sim", "tumour", "--sites", "3", "--patients", "40,120", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--patients" in result.output and "2 site sizes" in result.output
    assert not any(tmp_path.iterdir())  # refused before anything was written
