"""Proof that only model arrays and listed aggregate numbers leave a site.

Every message the sites send during a federation (statistics, training, evaluation) is recorded as the
server receives it, after Flower's serialisation, and checked: every field is in docs/privacy.md's table of
what a site sends (with its protection), arrays carry exactly the global model's keys and shapes
(SCAFFOLD's control variates too), the only list is the statistics release, the only strings are the site
id and the keyed data-set fingerprint, and no value taken from a patient record (a row of lab values, a
patient id, a file name, an image) appears anywhere.
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

from fedward.common.algorithms.scaffold import SCAFFOLD_CONTROL_DELTA
from fedward.common.config import RunConfig
from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.ckd_schema import NUM_FEATURES
from fedward.common.tasks import get_task
from fedward.simulations.phantoms import generate_site
from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 3
HEX64 = re.compile(r"[0-9a-f]{64}")
PRIVACY_DOC = Path(__file__).resolve().parents[1] / "docs" / "privacy.md"
PROTECTIONS = {"DP", "cells", "public"}
PLACEHOLDERS = {"<n>": r"\d+", "<category>": r"[a-z]+(?:-[a-z]+)*"}


def _listed_fields() -> dict[tuple[str, str], list[re.Pattern]]:
    """(message type, record) -> field patterns, from the table of docs/privacy.md."""
    listed: dict[tuple[str, str], list[re.Pattern]] = {}
    section = PRIVACY_DOC.read_text().split("## What leaves a hospital", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("message", "---"):
            continue
        messages, records, fields, _, protection = cells
        assert protection in PROTECTIONS, line
        names = re.findall(r"`([^`]+)`", fields)
        patterns = [re.compile(re.escape(n).replace(re.escape("<n>"), PLACEHOLDERS["<n>"]).replace(
            re.escape("<category>"), PLACEHOLDERS["<category>"])) for n in names]  # fmt: skip
        for message in messages.split(", "):
            for record in records.split(", "):
                listed.setdefault((message, record), []).extend(patterns)
    return listed


def _check_listed(reply: Message, listed: dict[tuple[str, str], list[re.Pattern]]) -> None:
    """Every field of every metric/config record of the reply is in the docs' table."""
    kind = reply.metadata.message_type
    records = {**reply.content.metric_records, **reply.content.config_records}
    for name, record in records.items():
        patterns = listed.get((kind, name)) or listed.get(("train" if kind == "train.local" else kind, name))
        assert patterns, f"{kind} sends a record {name!r} that docs/privacy.md does not list"
        for field in record:
            assert any(p.fullmatch(field) for p in patterns), (
                f"{kind} / {name} sends {field!r}, which docs/privacy.md does not list"
            )
    for name in reply.content.array_records:
        assert (kind, name) in listed or ("train", name) in listed, f"unlisted array record {name!r}"


def test_the_docs_table_lists_every_message_kind() -> None:
    listed = _listed_fields()
    assert {m for m, _ in listed} >= {"query.statistics", "train", "evaluate"}
    assert any(p.fullmatch("cal-3-hit") for p in listed[("evaluate", "metrics")])
    assert not any(p.fullmatch("train-patients") for p in listed[("query.statistics", "report")])


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
            # the one list is the statistics release: a fixed number of sums, never per-patient values
            assert not isinstance(value, list) or (key == "sums" and len(value) in (1, 1 + 3 * NUM_FEATURES))
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
    listed = _listed_fields()
    for reply in grid.replies:
        _check_listed(reply, listed)
    train = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert all("train-loss" not in r.content["metrics"] for r in train)  # unnoised under DP: never sent
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
    for reply in statistics:  # noisy sums: the exact training size does not come back
        release = reply.content["statistics"]
        assert release["noise-multiplier"] > 0 and release["drawn-now"] == 1
        assert reply.content["report"]["num-train"] == release["num-examples"]
        assert all(float(r.content["metrics"]["num-examples"]) == release["num-examples"] for r in train
                   if r.metadata.src_node_id == reply.metadata.src_node_id)  # fmt: skip
        assert "rows-read" not in reply.content["report"]
    noisy = [r.content["statistics"]["num-examples"] for r in statistics]
    assert noisy != [len(load_ckd_csv(sites / f"site-{i}" / "train.csv", strict=False)) for i in range(SITES)]


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
    listed = _listed_fields()
    for reply in grid.replies:
        _check_listed(reply, listed)
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


def test_a_private_round_without_this_runs_release_never_sends_the_exact_size(tmp_path: Path) -> None:
    """A site whose context lost the run's statistics release (a fresh context, a resumed run) reports the
    release it keeps beside its ledger, or refuses to train privately: never its exact number of patients."""
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, SITES, "iid")
    config = ckd_run_config(sites, tmp_path / "runs", **{"num-server-rounds": 1, "min-sites": SITES})
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)
    train = next(m for m in reversed(grid.sent) if m.metadata.message_type == "train")
    context = grid.contexts[train.metadata.dst_node_id]
    del context.state["statistics-release"]  # as a fresh context would be

    (reply,) = grid.send_and_receive([train])

    site = train.metadata.dst_node_id
    released = next(
        r.content["statistics"]["num-examples"] for r in grid.replies
        if r.metadata.message_type == "query.statistics" and r.metadata.src_node_id == site
    )  # fmt: skip
    if reply.has_error():  # nothing to report the size from: no private round
        assert "no exact patient count" in reply.error.reason
    else:  # the count of the release kept beside the site's ledger, never the exact size
        assert reply.content["metrics"]["num-examples"] == released
