"""Proof that only model arrays and aggregate numbers leave a site.

Every message the sites send during a federation (statistics, training, evaluation) is recorded as the
server receives it, after Flower's serialisation, and checked: arrays carry exactly the global model's
keys and shapes (SCAFFOLD's control variates too), metrics are scalars or per-feature aggregates, the only
strings are the site id and the data-set fingerprint, and no value taken from a patient record (a row of
lab values, a patient id, a file name, an image) appears anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Message
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from mri_helpers import CONTRASTS, SPEC

from common.config import RunConfig
from common.data.ckd import load_ckd_csv
from common.data.ckd_schema import NUM_FEATURES
from common.local_state import SCAFFOLD_CONTROL_DELTA
from common.tasks import get_task
from simulations.phantoms import generate_site
from simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 3
HEX64 = re.compile(r"[0-9a-f]{64}")


def _model_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    parsed = RunConfig.from_flower(config)
    torch.manual_seed(0)
    return {k: tuple(v.shape) for k, v in get_task(parsed.task).build_model(parsed).state_dict().items()}


def _strings_and_numbers(reply: Message) -> tuple[list[str], list[float]]:
    """Every string and every number in the reply's records, and check their kinds on the way."""
    strings: list[str] = []
    numbers: list[float] = []
    for name, record in reply.content.config_records.items():
        assert name == "site", f"unexpected config record {name!r}"
        assert set(record) <= {"site-id", "fingerprint"}, sorted(record)
        strings += [str(v) for v in record.values()]
    for name, record in reply.content.metric_records.items():
        assert name in {"metrics", "statistics", "report"}, f"unexpected metric record {name!r}"
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            assert all(isinstance(v, int | float) for v in values), key
            # lists are per-feature aggregates (24 features), never per-patient values
            assert not isinstance(value, list) or len(value) == NUM_FEATURES, (key, len(value))
            numbers += [float(v) for v in values]
    return strings, numbers


def _check_arrays(reply: Message, shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
    arrays = []
    for name, record in reply.content.array_records.items():
        assert name in {"arrays", SCAFFOLD_CONTROL_DELTA}, f"unexpected array record {name!r}"
        got = {k: tuple(a.shape) for k, a in record.items()}
        expected = shapes if name == "arrays" else {k: shapes[k] for k in got}
        assert got == expected, name
        arrays += [a.numpy() for a in record.values()]
    return arrays


def _allowed_strings(grid: InProcessGrid, strings: list[str]) -> None:
    site_ids = {f"site-{i}" for i in range(SITES)}
    for text in strings:
        assert text in site_ids or HEX64.fullmatch(text), f"unexpected string sent by a site: {text!r}"


def test_ckd_federation_sends_only_model_arrays_and_aggregates(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, SITES, "dirichlet", alpha=1.0)
    config = ckd_run_config(
        sites, tmp_path / "runs",
        **{"num-server-rounds": 2, "min-sites": SITES, "strategy": "scaffold", "dp-noise-multiplier": 1.0},
    )  # fmt: skip
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)

    kinds = {r.metadata.message_type for r in grid.replies}
    assert kinds == {"query.statistics", "train", "evaluate"}
    assert not any(r.has_error() for r in grid.replies)
    shapes = _model_shapes(config)
    rows = []
    raw_cells: set[str] = set()
    for i in range(SITES):
        for split in ("train", "test"):
            table = load_ckd_csv(sites / f"site-{i}" / f"{split}.csv", strict=False)
            rows.append(table.x)
            raw_cells |= set((sites / f"site-{i}" / f"{split}.csv").read_text().replace("\n", ",").split(","))
    patients = np.concatenate(rows)
    for reply in grid.replies:
        strings, numbers = _strings_and_numbers(reply)
        _allowed_strings(grid, strings)
        assert not (set(strings) & raw_cells - {""}), "a raw cell of a patient record left the site"
        arrays = _check_arrays(reply, shapes)
        for vector in [np.asarray(numbers)] + [a.ravel() for a in arrays]:
            # no patient's lab values (with their missing pattern) appear as a run of numbers
            for row in patients[:: max(1, len(patients) // 40)]:
                known = row[~np.isnan(row)]
                if len(known) >= 8 and len(vector) >= len(known):
                    windows = np.lib.stride_tricks.sliding_window_view(vector, len(known))
                    assert not np.any(np.all(np.isclose(windows, known, rtol=0, atol=1e-6), axis=1))
    statistics = [r for r in grid.replies if r.metadata.message_type == "query.statistics"]
    for reply in statistics:  # the statistics are sums over a site's rows: counts are whole sites
        counts = reply.content["statistics"]["count"]
        assert min(counts) >= 0 and max(counts) == reply.content["statistics"]["num-examples"]


def test_tumour_federation_sends_no_image_no_patient_id_no_file_name(tmp_path: Path) -> None:
    root = tmp_path / "mri"
    for i in range(SITES):
        generate_site(root / f"site-{i}", i, 6, spec=SPEC, seed=11)
    config = RunConfig(
        task="tumour", data_root=str(root), runs_dir=str(tmp_path / "runs"), num_server_rounds=1,
        min_sites=SITES, dp=False, optimizer="adam", lr=0.01, image_size=16, image_depth=8,
        mri_contrasts=",".join(CONTRASTS),
    ).to_flower()  # fmt: skip
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)

    assert not any(r.has_error() for r in grid.replies)
    shapes = _model_shapes(config)
    manifest_ids = set()
    for manifest in root.glob("site-*/manifest.csv"):
        for line in manifest.read_text().splitlines()[1:]:
            manifest_ids.add(line.split(",")[0])
    file_names = {p.name for p in root.rglob("*") if p.is_file()}
    sent_text = []
    for reply in grid.replies:
        strings, _ = _strings_and_numbers(reply)
        _allowed_strings(grid, strings)
        sent_text += strings
        for array in _check_arrays(reply, shapes):
            assert array.ndim < 4 or array.shape[-1] <= 7, "an image-sized array left a site"
    blob = json.dumps(sent_text)
    assert manifest_ids and not any(pid in blob for pid in manifest_ids)
    assert not any(name in blob for name in file_names)
    fingerprints = {s for s in sent_text if HEX64.fullmatch(s)}
    assert all(hashlib.sha256(f.encode()).hexdigest() != f for f in fingerprints)  # hashes, not names
