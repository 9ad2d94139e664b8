"""Cost of the phantom generator: seconds per rendered patient (simple vs MNI anatomy) and a whole
1,000-patient federation of unequal sites written as DICOM.

Render: `phantoms.render` in one process on one torch/BLAS thread, `--patients` cases per grid (classes in
turn, one scanner), after the template and the grid's smoothed maps are cached (their one-off cost is
reported apart). Write: `generate_sites` with the given site sizes, DICOM series of the given contrasts,
the seconds of the whole call (render, DICOM files, masks, manifests). Prints a table and writes JSON.

    python -P benchmarks/anatomy_phantoms.py [--patients 1000] [--sites 100,200,300,400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from fedward.simulations import anatomy
from fedward.simulations.phantoms import PhantomSpec, generate_sites, render, scanner

GRIDS = ((32, 12), (32, 16), (48, 24))


def render_seconds(spec: PhantomSpec, patients: int) -> float:
    """Mean seconds per `render` call over `patients` cases."""
    rng, scan = np.random.default_rng(0), scanner(1, 0)
    render(rng, 0, spec, scan)  # caches filled
    started = time.perf_counter()
    for p in range(patients):
        render(rng, p % 4, spec, scan)
    return (time.perf_counter() - started) / patients


def main() -> None:
    """Measure, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--sites", default="100,200,300,400", help="site sizes of the written federation")
    parser.add_argument("--contrasts", default="t1ce,flair")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anatomy_phantoms.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    anatomy.load_template()
    template_s = time.perf_counter() - started
    rows = []
    for size, slices in GRIDS:
        started = time.perf_counter()
        anatomy.grid_for(size, slices)
        grid_s = time.perf_counter() - started
        row = {"grid": f"{size}x{size}x{slices}", "grid_cache_s": round(grid_s, 3)}
        for kind in ("simple", "mni"):
            spec = PhantomSpec(size=size, slices=slices, anatomy=kind)
            row[f"{kind}_ms_per_patient"] = round(1000 * render_seconds(spec, args.patients), 2)
        rows.append(row)
        print(row, flush=True)
    sizes = [int(v) for v in args.sites.split(",")]
    spec = PhantomSpec(size=32, slices=12, contrasts=tuple(args.contrasts.split(",")), anatomy="mni")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        generate_sites(Path(tmp), len(sizes), sizes, spec=spec, seed=0)
        write_s = time.perf_counter() - started
    written = {"sites": sizes, "contrasts": spec.contrasts, "grid": "32x32x12", "seconds": round(write_s, 1)}
    print(f"template load {template_s:.2f} s; {sum(sizes)} MNI patients written as DICOM in {write_s:.1f} s")
    payload = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "threads": 1},
        "patients_rendered": args.patients,
        "template_load_s": round(template_s, 2),
        "render": rows,
        "dicom_federation": written,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
