"""The two-stage tumour pipeline: per-tumour features, the segmenter record the coordinator sends, and a
2-site pipeline federation on a real (1-round) tumour-seg run's model."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid, run_server
from mri_helpers import CONTRASTS, SPEC

from fedward.common.config import RunConfig
from fedward.common.data.mri.tumour_features import (
    LOG_VOLUME_SCALE,
    feature_names,
    shape_features,
    tumour_features,
)
from fedward.common.errors import ConfigError
from fedward.common.tasks import get_task
from fedward.common.tasks.tumour_pipeline import KEY, SEGMENTER
from fedward.server.provenance.signing import resolve_signing_key
from fedward.server.run_inputs import load_run_inputs
from fedward.simulations.phantoms import generate_site

SITES = 2
GRID = {"image-size": 16, "image-depth": 8, "mri-contrasts": ",".join(CONTRASTS)}


def test_features_of_a_known_box() -> None:
    image = np.zeros((2, 10, 10, 10), dtype=np.float32)
    image[:, 1:9, 1:9, 1:9] = 1.0  # the brain: median 1 in both channels
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[6:9, 3:7, 1:3] = True  # 3 x 4 x 2 = 24 voxels
    image[0][mask] = np.repeat([3.0, 5.0], 12)  # channel 0: mean 4, sd 1 inside
    image[1][mask] = 1.0
    f = dict(zip(feature_names(("a", "b")), tumour_features(image, mask, (2.0, 1.0, 0.5)), strict=True))
    assert f["presence"] == 1
    assert f["log-volume"] == pytest.approx(math.log1p(24 * 1.0) / LOG_VOLUME_SCALE)  # 24 mm³
    assert f["centroid-x"] == pytest.approx(7 / 9 * 2 - 1)  # voxel 7 of 0..9
    assert f["centroid-y"] == pytest.approx(4.5 / 9 * 2 - 1)
    assert f["centroid-z"] == pytest.approx(1.5 / 9 * 2 - 1)
    assert f["midline-distance"] == pytest.approx(abs(7 / 9 * 2 - 1))
    assert (f["extent-x"], f["extent-y"], f["extent-z"]) == pytest.approx((0.3, 0.4, 0.2))
    assert f["box-fill"] == 1 and f["surface-ratio"] == 1  # a 2-voxel-thick box has no interior voxel
    assert (f["a-mean"], f["a-sd"], f["a-p10"], f["a-p90"]) == pytest.approx((3.0, 1.0, 2.0, 4.0))
    assert (f["b-mean"], f["b-sd"], f["b-p10"], f["b-p90"]) == pytest.approx((0.0, 0.0, 0.0, 0.0))


def test_compact_shape_has_interior_and_stray_voxels_are_dropped() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:7, 2:7, 2:7] = True  # 125 voxels, 27 inside
    assert shape_features(mask, (1, 1, 1))[10] == pytest.approx(98 / 125)
    with_speck = mask.copy()
    with_speck[11, 11, 11] = True  # a stray predicted voxel far away
    image = np.ones((1, 12, 12, 12), dtype=np.float32)
    assert np.array_equal(
        tumour_features(image, with_speck, (1, 1, 1)), tumour_features(image, mask, (1, 1, 1))
    )


def test_empty_mask_is_zeros_with_presence_zero() -> None:
    image = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
    features = tumour_features(image, np.zeros((8, 8, 4), dtype=bool), (1, 1, 1))
    assert features.shape == (len(feature_names(("a", "b"))),) and not features.any()
    assert len(tumour_features(image[:, :, :, 0], np.zeros((8, 8), dtype=bool), (1, 1))) == len(
        feature_names(("a", "b"), 2)
    )


@pytest.fixture(scope="module")
def identity() -> Iterator[None]:
    """Let Messages be created in this process (as flower_fakes.flower_identity, for a module fixture)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mri")
    for i in range(SITES):
        generate_site(root / f"site-{i}", i, 8, spec=SPEC, seed=5)
    return root


def _config(task: str, root: Path, runs: Path, name: str, **overrides: object) -> dict:
    config = RunConfig(
        task=task, data_root=str(root), runs_dir=str(runs), run_name=name, num_server_rounds=1,
        min_sites=SITES, dp=False, optimizer="adam", lr=0.01, local_epochs=1, batch_size=4,
    ).to_flower()  # fmt: skip
    config.update(GRID)
    config.update(overrides)
    return config


def _segmenter(config: RunConfig) -> dict:
    """What the coordinator sends as the segmenter, read and checked as the ServerApp does."""
    inputs = load_run_inputs(get_task("tumour-pipeline"), config, resolve_signing_key(None))
    return inputs.records[SEGMENTER].to_torch_state_dict()


@pytest.fixture(scope="module")
def seg_run(identity: None, sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-round tumour-seg federation (real ServerApp and ClientApp) on the two sites."""
    runs = tmp_path_factory.mktemp("runs")
    config = _config("tumour-seg", sites, runs, "seg", model="unet")
    run_server(InProcessGrid(config, SITES), config)
    return runs / "seg"


def test_pipeline_federation_sends_the_segmenter_and_no_reply_returns_it(
    seg_run: Path, sites: Path, tmp_path: Path
) -> None:
    config = _config(
        "tumour-pipeline", sites, tmp_path, "pipe", **{KEY: str(seg_run), "num-server-rounds": 2}
    )
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)

    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count("train") == 2 * SITES and kinds.count("evaluate") == 2 * SITES
    state = _segmenter(RunConfig.from_flower(config))
    for message in grid.sent:
        if message.metadata.message_type.split(".")[0] in ("train", "evaluate"):
            sent = message.content[SEGMENTER].to_torch_state_dict()
            assert sent.keys() == state.keys() and all((sent[k] == state[k]).all() for k in state)
        else:
            assert SEGMENTER not in message.content
    assert grid.replies and not any(r.has_error() for r in grid.replies)
    assert not any(SEGMENTER in r.content for r in grid.replies)
    summary = json.loads((tmp_path / "pipe" / "summary.json").read_text())
    assert summary["task"] == "tumour-pipeline" and summary["rounds-completed"] == 2
    assert summary["overall"]["num-examples"] > 0 and 0 <= summary["overall"]["accuracy"] <= 1
    inputs = json.loads((tmp_path / "pipe" / "config.json").read_text())["run-inputs"]
    assert inputs[KEY]["run"] == str(seg_run.resolve())
    model = get_task("tumour-pipeline").build_model(RunConfig.from_flower(config))
    assert sum(p.numel() for p in model.parameters()) < 5_000  # a small MLP, not an image model


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"task": "tumour"}, "expected a tumour-seg run"),
        ({"image-size": 24}, "image-size"),
        ({"mri-contrasts": "t1,t2"}, "mri-contrasts"),
    ],
)
def test_a_segmenter_run_of_another_task_or_grid_is_refused(
    seg_run: Path, tmp_path: Path, change: dict, expected: str
) -> None:
    copy = tmp_path / "other"
    shutil.copytree(seg_run, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["run-config"].update(change)
    (copy / "config.json").write_text(json.dumps(saved))
    config = RunConfig.from_flower(_config("tumour-pipeline", tmp_path, tmp_path, "x", **{KEY: str(copy)}))
    with pytest.raises(ConfigError, match=f"^{KEY}: .*{expected}"):
        _segmenter(config)
    with pytest.raises(ConfigError, match=f"^{KEY}: "):
        _segmenter(config.model_copy(update={"segmenter_run": str(tmp_path / "missing")}))


def test_a_changed_segmenter_run_fails_its_provenance_check(
    seg_run: Path, sites: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "seg"
    shutil.copytree(seg_run, copy)
    with (copy / "model.safetensors").open("r+b") as fh:  # same shapes, different weights
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x3f")
    config = _config("tumour-pipeline", sites, tmp_path, "pipe", **{KEY: str(copy)})
    with pytest.raises(ConfigError, match=f"^{KEY}: .*provenance"):
        run_server(InProcessGrid(config, SITES), config)
