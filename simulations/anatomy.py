"""Brain-tumour phantoms on real anatomy: the MNI ICBM152 2009a template that the nilearn wheel ships.

The T1 template (its support is the brain mask) and the grey- and white-matter probability maps are read
once per process from the installed nilearn package (no fetcher, nothing downloads), cropped to the brain
with a margin and reduced to 2 mm. For each grid (size × size × slices) they are smoothed to the grid's
voxel once. Each patient is then:

- a smooth deformation of the template (scale, rotation, shift and a low-frequency displacement field);
- tissue fractions: grey and white matter, CSF (intracranial space minus GM and WM: ventricles, sulci and
  a thin layer under the skull) and a skull/scalp ring outside it;
- a tumour in template millimetres (MNI, RAS), set by its class: glioma in hemispheric white matter
  (irregular, enhancing rim, necrotic core, FLAIR-bright oedema along the white matter, mass effect);
  meningioma at the convexity, dural-based and touching the skull (round, homogeneously enhancing, thin
  oedema); pituitary in the sella (midline, inferior, small, enhancing); or none;
- T1/T1ce/T2/FLAIR as weighted sums of the fractions (phantoms.TISSUE, with per-patient jitter);
- the site's scanner (bias field, Rician noise, scale), as for the simple phantoms.

Array axes are i → left, j → posterior, k → superior, as the DICOM/NIfTI writers of phantoms.py store them.

Template: ICBM 2009a Nonlinear Symmetric, © McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University (Fonov et al., NeuroImage 2009 and 2011).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates

from fedward.common.data.mri.dicom import LPS_TO_RAS
from fedward.common.data.mri.sample import CLASSES
from fedward.common.errors import FedwardError
from fedward.simulations.phantoms import CONTRASTS, TISSUE, Phantom, PhantomSpec, Scanner

TEMPLATE_FILES = {
    name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")
}
STEP_MM = 2.0  # resolution of the process-wide template cache
MARGIN_MM = 20.0  # cached around the brain's bounding box (room for the skull/scalp ring and deformation)
CSF_RIM_MM = 3.0  # intracranial space = brain dilated by this much (extra-cerebral CSF)
HEAD_MM = 11.0  # skull and scalp outside it
MAPS = ("gm", "wm", "brain", "cavity", "head")
# Order of the tissue fractions (rows of the contrast weights).
TISSUES = ("skull", "grey", "white", "csf", "oedema", "glioma", "necrosis", "meningioma", "pituitary")


class TemplateMissing(FedwardError):
    """A file of the MNI template is not where the installed nilearn wheel keeps it."""


@dataclass(frozen=True)
class Template:
    """The template at STEP_MM: maps (MAPS order), where voxel 0 lies (MNI mm) and tumour sites."""

    maps: np.ndarray  # (5, X, Y, Z) float32 fractions
    origin: np.ndarray  # MNI (RAS) mm of voxel (0, 0, 0)
    centre: np.ndarray  # centre of the brain's bounding box, MNI mm
    half: np.ndarray  # half-extent (mm) of the field of view around `centre`
    white: np.ndarray  # (K, 3) MNI mm: deep hemispheric white matter (glioma centres)
    convexity: np.ndarray  # (K, 3) MNI mm: brain surface above the ventricles (meningioma bases)
    normals: np.ndarray  # (K, 3) outward unit normals at `convexity`


@dataclass(frozen=True)
class Grid:
    """A template smoothed for one grid, and the grid's voxel centres in centred template mm."""

    maps: np.ndarray  # (5, X, Y, Z) float32, smoothed to the grid's voxel
    points: np.ndarray  # (N, 3) float64, centred MNI mm of each output voxel (C order over i, j, k)
    unit: np.ndarray  # (3, N) float32, the same in [-1, 1] along i, j, k (bias field)
    voxel_mm: np.ndarray  # (3,) grid voxel size in template mm


@dataclass
class MniCase:
    """A noise-free case: tissue fractions (TISSUES order), contrasts (CONTRASTS order), tumour mask."""

    label: int
    fractions: np.ndarray  # (len(TISSUES), n, n, s) float32
    image: np.ndarray  # (len(CONTRASTS), n, n, s) float32, relative intensities
    mask: np.ndarray  # (n, n, s) uint8, whole tumour (incl. oedema)
    mni: np.ndarray  # (n, n, s, 3) float32: MNI mm (RAS) each voxel was sampled from
    centre: np.ndarray | None  # tumour centre, MNI mm


def template_files(folder: Path | None = None) -> dict[str, Path]:
    """The three template files, from `folder` or the installed nilearn package (never downloaded)."""
    if folder is None:
        spec = importlib.util.find_spec("nilearn")
        if spec is None or spec.origin is None:
            raise TemplateMissing(
                f"the MNI template ({TEMPLATE_FILES['t1']}) comes with the nilearn wheel, which is not "
                "installed: pip install 'nilearn>=0.12,<0.14'"
            )
        folder = Path(spec.origin).parent / "datasets" / "data"
    files = {name: folder / file for name, file in TEMPLATE_FILES.items()}
    for path in files.values():
        if not path.is_file():
            raise TemplateMissing(
                f"{path}: MNI template file not found (expected in the nilearn wheel, nilearn>=0.12)"
            )
    return files


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    shape = [s // factor for s in volume.shape]
    cut = volume[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return cut.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def _soft(distance: np.ndarray, radius: float, width: float) -> np.ndarray:
    """1 inside `radius`, 0 outside, linear over `width` (partial volume)."""
    return np.clip(0.5 + (radius - distance) / width, 0.0, 1.0)


@lru_cache(maxsize=2)
def load_template(folder: Path | None = None) -> Template:
    """The template, cropped to the brain plus MARGIN_MM and reduced to STEP_MM (cached per process)."""
    files = template_files(folder)
    images = {name: nib.load(path) for name, path in files.items()}
    affine = images["t1"].affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise TemplateMissing(
            f"{files['t1']}: expected a 1 mm RAS grid, got affine {affine[:3, :3].tolist()}"
        )
    t1 = np.asarray(images["t1"].dataobj)
    inside = t1 > 0
    occupied = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    lo, hi = np.array([o[0] for o in occupied]), np.array([o[-1] for o in occupied])
    factor, pad = int(STEP_MM), int(MARGIN_MM)
    size = ((hi - lo + 1 + 2 * pad + factor - 1) // factor) * factor
    start = lo - pad

    def crop(volume: np.ndarray) -> np.ndarray:
        out = np.zeros(tuple(size), dtype=np.float32)
        src_lo, src_hi = np.maximum(start, 0), np.minimum(start + size, volume.shape)
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(src_lo, src_hi, start, strict=True))
        out[dst] = volume[tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))]
        return _block_mean(out, factor)

    brain = crop(inside.astype(np.float32))
    gm = crop(np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0) * (brain > 0)
    wm = crop(np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0) * (brain > 0)
    outside = distance_transform_edt(brain < 0.5) * STEP_MM
    depth = distance_transform_edt(brain >= 0.5) * STEP_MM
    cavity = np.maximum(brain, _soft(outside, CSF_RIM_MM, STEP_MM))
    head = np.maximum(cavity, _soft(outside, CSF_RIM_MM + HEAD_MM, STEP_MM))
    maps = np.stack([gm, wm, brain, cavity, head]).astype(np.float32)
    origin = affine[:3, 3] + start + (factor - 1) / 2  # centre of the first 2 mm block
    grid = np.indices(brain.shape, dtype=np.float32).reshape(3, -1).T * STEP_MM + origin
    centre = affine[:3, 3] + (lo + hi) / 2
    half = (hi - lo) / 2 + CSF_RIM_MM + HEAD_MM + 2.0  # the field of view holds the whole ring
    flat = {"wm": wm.ravel(), "depth": depth.ravel(), "outside": outside.ravel()}
    x, z = grid[:, 0], grid[:, 2]
    white = (flat["wm"] > 0.75) & (np.abs(x) > 16) & (np.abs(x) < 50) & (z > -5) & (flat["depth"] > 16)
    surface = (flat["depth"] > 0) & (flat["depth"] <= STEP_MM) & (z > 15) & (np.abs(x) > 12)
    signed = outside - depth
    normals = np.stack(np.gradient(signed), axis=-1).reshape(-1, 3)[surface]
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-9
    return Template(maps, origin, centre, half, grid[white], grid[surface], normals)


@lru_cache(maxsize=8)
def grid_for(size: int, slices: int) -> Grid:
    """The template smoothed to a size × size × slices grid's voxel, and that grid's points."""
    tpl = load_template()
    axes = [np.linspace(-1.0, 1.0, n) for n in (size, size, slices)]
    voxel = 2 * tpl.half / (np.array([size, size, slices]) - 1)
    sigma = np.sqrt(np.maximum((voxel / STEP_MM) ** 2 - 1.0, 0.0)) * 0.42  # to the grid's voxel
    maps = np.stack([gaussian_filter(m, sigma, truncate=2.5) for m in tpl.maps]).astype(np.float32)
    u = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    points = (u * np.array([-1.0, -1.0, 1.0])[:, None] * tpl.half[:, None]).T  # i → left, j → posterior
    return Grid(maps, np.ascontiguousarray(points), u.astype(np.float32), voxel)


def _rotation(angles: np.ndarray) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deform(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Centred template mm → template mm: small affine plus a smooth displacement field (waves, ≤ ~4 mm)."""
    scale = rng.uniform(0.92, 1.06) * rng.uniform(0.96, 1.04, 3)
    matrix = _rotation(np.deg2rad(rng.uniform(-6, 6, 3))) * scale
    waves = rng.normal(size=(3, 6))  # six waves, each a direction and a wavelength of 100-220 mm
    waves *= 2 * np.pi / rng.uniform(100, 220, 6) / np.linalg.norm(waves, axis=0)
    phase, amp = rng.uniform(0, 2 * np.pi, 6), rng.uniform(-2.0, 2.0, (6, 3))
    return points @ matrix.T + rng.uniform(-5, 5, 3) + np.sin(points @ waves + phase) @ amp


def _lumpy(offset: np.ndarray, rng: np.random.Generator, lumps: float) -> np.ndarray:
    """Distance divided by a direction-dependent radius factor: a ball with `lumps` irregularity."""
    dist = np.linalg.norm(offset, axis=1)
    direction = offset / (dist[:, None] + 1e-6)
    lobes = rng.normal(size=(3, 4))
    lobes /= np.linalg.norm(lobes, axis=0)
    cos = direction @ lobes
    factor = 1 + lumps * (
        cos[:, :2] @ rng.uniform(-1, 1, 2) + (cos[:, 2:] ** 2 - 1 / 3) @ rng.uniform(-1, 1, 2)
    )
    return dist / np.maximum(factor, 0.5)


def _tumour(
    rng: np.random.Generator, label: int, mni: np.ndarray, width: float
) -> tuple[dict[str, np.ndarray], np.ndarray | None, float]:
    """Raw tumour fractions at MNI points by class, its centre and the mass-effect radius (0: none)."""
    tpl, name = load_template(), CLASSES[label]
    if name == "glioma":
        c = tpl.white[rng.integers(len(tpl.white))] + rng.uniform(-3, 3, 3)
        r = rng.uniform(13, 22)
        dist = _lumpy((mni - c) * rng.uniform(0.85, 1.15, 3), rng, 0.25)
        solid = _soft(dist, r, width)
        return (
            {
                "necrosis": _soft(dist, r * rng.uniform(0.4, 0.6), width),
                "glioma": solid,
                "oedema": _soft(dist, r * rng.uniform(1.8, 2.4), 2 * width),
            },
            c,
            r * rng.uniform(1.0, 1.6),
        )
    if name == "meningioma":
        k = rng.integers(len(tpl.convexity))
        r = rng.uniform(12, 22)
        c = tpl.convexity[k] + tpl.normals[k] * r * rng.uniform(-0.25, 0.15)
        dist = np.linalg.norm(mni - c, axis=1)
        return (
            {"meningioma": _soft(dist, r, width), "oedema": _soft(dist, r * 1.25, width)},
            c,
            r * rng.uniform(0.6, 1.0),
        )
    if name == "pituitary":
        c = np.array([rng.uniform(-1.5, 1.5), rng.uniform(-2, 6), rng.uniform(-34, -27)])
        r = rng.uniform(8, 13)
        stretch = np.array([1.0, 1.0, 1 / rng.uniform(1.1, 1.4)])  # taller than wide
        dist = _lumpy((mni - c) * stretch, rng, 0.1)
        return {"pituitary": _soft(dist, r, width)}, c, 0.0
    return {}, None, 0.0


def mni_case(rng: np.random.Generator, label: int, spec: PhantomSpec, *, mass_effect: bool = True) -> MniCase:
    """One noise-free case of class `label` on the spec's grid (all randomness from `rng`)."""
    n, s = spec.size, spec.slices
    grid, tpl = grid_for(n, s), load_template()
    mni = deform(rng, grid.points) + tpl.centre
    width = float(grid.voxel_mm.mean())
    raw, centre, push = _tumour(rng, label, mni, width)
    sample = mni
    if mass_effect and centre is not None and push > 0:  # tissue pushed away from the tumour
        offset = mni - centre
        pull = rng.uniform(0.3, 0.5) * np.exp(-(offset**2).sum(axis=1) / (2 * push**2))
        sample = mni - offset * pull[:, None]
    coords = ((sample - tpl.origin) / STEP_MM).T
    gm, wm, brain, cavity, head = (
        map_coordinates(m, coords, order=1, mode="constant", cval=0.0, prefilter=False) for m in grid.maps
    )
    fr = {t: np.zeros(n * n * s, dtype=np.float64) for t in TISSUES}
    if "glioma" in raw:  # solid tumour inside the brain; oedema along the white matter, not in the solid
        solid = raw["glioma"] * brain
        fr["necrosis"] = raw["necrosis"] * brain
        fr["glioma"] = solid - fr["necrosis"]
        spread = np.clip(0.45 + wm / (gm + wm + 1e-3), 0, 1)
        fr["oedema"] = np.clip(raw["oedema"] * brain - solid, 0, 1) * spread
    if "meningioma" in raw:  # fills the intracranial space it reaches, displacing brain and CSF
        fr["meningioma"] = raw["meningioma"] * cavity
        fr["oedema"] = np.clip(raw["oedema"] * brain - fr["meningioma"], 0, 1) * 0.6
    if "pituitary" in raw:
        fr["pituitary"] = raw["pituitary"]
    tumour = sum(fr[t] for t in ("oedema", "glioma", "necrosis", "meningioma", "pituitary"))
    keep = np.clip(1.0 - tumour, 0.0, 1.0)
    gm, wm = np.minimum(gm, cavity), np.minimum(wm, cavity)
    fr["grey"], fr["white"] = gm * keep, wm * keep
    fr["csf"] = np.clip(cavity - gm - wm, 0, 1) * keep
    fr["skull"] = np.clip(head - cavity, 0, 1) * keep
    fractions = np.stack([fr[t] for t in TISSUES]).astype(np.float32)
    weights = np.array([TISSUE[t] for t in TISSUES], dtype=np.float32).T  # (contrasts, tissues)
    weights *= rng.uniform(0.93, 1.07, weights.shape).astype(np.float32)  # per-patient contrast
    weights *= rng.uniform(0.95, 1.05, (len(CONTRASTS), 1)).astype(np.float32)  # per-patient intensity
    image = (weights @ fractions).reshape(len(CONTRASTS), n, n, s)
    return MniCase(
        label=label,
        fractions=fractions.reshape(len(TISSUES), n, n, s),
        image=image,
        mask=(tumour >= 0.5).reshape(n, n, s).astype(np.uint8),
        mni=mni.reshape(n, n, s, 3).astype(np.float32),
        centre=centre,
    )


def render_mni(rng: np.random.Generator, label: int, spec: PhantomSpec, scan: Scanner) -> Phantom:
    """One case of class `label` on MNI anatomy as `scan` acquires it (the phantoms.render contract)."""
    case = mni_case(rng, label, spec)
    n, s = spec.size, spec.slices
    u = grid_for(n, s).unit
    bias = np.exp(np.asarray(scan.bias, dtype=np.float32) @ u).reshape(1, n, n, s)
    keep = [CONTRASTS.index(c) for c in spec.contrasts]
    clean = case.image[keep] * bias
    noise = rng.standard_normal((2, *clean.shape), dtype=np.float32) * np.float32(scan.noise)
    image = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2) * np.float32(scan.scale)  # Rician magnitude
    lps = np.diag([scan.pixel_mm, scan.pixel_mm, scan.slice_mm, 1.0])
    lps[:3, 3] = [-scan.pixel_mm * n / 2, -scan.pixel_mm * n / 2, -scan.slice_mm * s / 2]
    return Phantom(label, image.astype(np.float32), case.mask, LPS_TO_RAS @ lps, lps)
