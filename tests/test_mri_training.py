"""Tumour tasks: patient-level splits, Opacus-compatible models, one DP step each, metrics pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mri_helpers import CONTRASTS, make_site
from opacus.validators import ModuleValidator

from fedward.common import training
from fedward.common.config import RunConfig
from fedward.common.data.split import split_by_patient
from fedward.common.errors import ConfigError
from fedward.common.imaging_models import (
    FixedFeatures,
    VoxelFeatures,
    build_classifier,
    build_segmenter,
    phantom_reference,
)
from fedward.common.metrics import multiclass_metrics, pool_multiclass
from fedward.common.privacy import DPConfig
from fedward.common.tasks import SiteSource, get_task
from fedward.common.training import LocalTraining, local_mechanism, train_model


def _config(task: str, **extra) -> RunConfig:
    settings = {"image_size": 16, "image_depth": 8, **extra}
    return RunConfig(task=task, mri_contrasts=",".join(CONTRASTS), **settings)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mri-train")
    make_site(root, "nifti", patients=8)
    make_site(root, "png", patients=8)
    return root


def test_split_keeps_each_patient_on_one_side() -> None:
    patients = [f"p{i // 3}" for i in range(30)]  # 10 patients, 3 samples each
    strata = np.array([int(p[1:]) % 2 for p in patients])
    train, test = split_by_patient(patients, strata, 0.3, seed=0)
    assert sorted([*train, *test]) == list(range(30))
    assert not {patients[i] for i in train} & {patients[i] for i in test}
    assert len({patients[i] for i in test}) == 3


def test_image_folder_site_splits_by_patient(root) -> None:
    config = _config("tumour", image_size=32, image_depth=0)
    site = get_task("tumour").load_site(SiteSource("s", root / "png-1"), config)
    assert len(site.train) + site.num_test == site.report["samples"] > site.report["patients"] == 8
    assert site.num_train == site.report["train-patients"]  # n counts patients (the DP unit)
    assert not set(site.train.patients) & set(site.test.patients)
    assert site.train.images.shape[1:] == (2, 32, 32)  # grey-level image fills both channels


@pytest.mark.parametrize(
    ("task", "model", "depth"),
    [
        ("tumour", "cnn", 8),
        ("tumour", "densenet121", 0),
        ("tumour", "features", 8),
        ("tumour-seg", "unet", 8),
        ("tumour-seg", "voxel-features", 8),
    ],
)
def test_one_dp_step_per_model(root, task: str, model: str, depth: int) -> None:
    folder, size = (root / "png-1", 32) if depth == 0 else (root / "nifti-1", 16)
    config = _config(
        task, model=model, image_depth=depth, image_size=size, tumour_binary=model == "densenet121"
    )
    t = get_task(task)
    site = t.load_site(SiteSource("s", folder), config)
    train_set, test_set = t.datasets(site, {})
    net = t.build_model(config)
    assert ModuleValidator.validate(net, strict=False) == []
    before = [p.detach().clone() for p in net.parameters()]
    local = LocalTraining(epochs=1, batch_size=len(train_set), lr=0.01, optimizer="adam")
    dp = DPConfig(noise_multiplier=1.0)
    mechanism = local_mechanism(dp, len(train_set), local, delta=1e-3)
    out = train_model(net, train_set, t.loss, local, dp, mechanism=mechanism)
    assert out.steps == 1 and out.privacy_steps == [(1.0, 1.0, 1)]
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    metrics = t.evaluate(net, test_set, torch.device("cpu"))
    assert metrics["num-examples"] == site.num_test
    pooled = t.pool([metrics, metrics])
    assert pooled["num-examples"] == 2 * site.num_test
    empty = t.loss(net(test_set.tensors[0][:0]), test_set.tensors[1][:0])
    assert float(empty.detach()) == 0.0  # an empty Poisson batch


def test_private_unet_survives_empty_poisson_batches(root, monkeypatch: pytest.MonkeyPatch) -> None:
    """UNet layers without an Opacus grad sampler (ConvTranspose3d, PReLU) fail on a batch of 0; an empty
    Poisson batch must still be a noise-only step that the accountant counts."""
    config = _config("tumour-seg", model="unet")
    t = get_task("tumour-seg")
    train_set, _ = t.datasets(t.load_site(SiteSource("s", root / "nifti-1"), config), {})
    torch.manual_seed(0)
    net = t.build_model(config)
    local = LocalTraining(epochs=3, batch_size=1, lr=0.01, optimizer="adam", seed=3)
    empty_batches = []
    noise_only = training._empty_per_sample_gradients
    monkeypatch.setattr(
        training, "_empty_per_sample_gradients", lambda p: empty_batches.append(noise_only(p))
    )

    dp = DPConfig(noise_multiplier=1.0)
    mechanism = local_mechanism(dp, len(train_set), local, delta=1e-3)
    out = train_model(net, train_set, t.loss, local, dp, mechanism=mechanism)

    n = len(train_set)
    assert empty_batches  # q = 1/n over 3n steps: empty batches happen (seeded)
    assert out.steps == 3 * n and sum(k for _, _, k in out.privacy_steps) == 3 * n
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_tumour_dp_uses_functorch_and_survives_empty_batches(root, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tumour task's private training computes per-sample gradients with functorch (its 3D convs are
    faster so) and an empty Poisson batch is still a counted noise-only step."""
    from opacus.grad_sample import grad_sample_module

    config = _config("tumour", model="cnn")
    t = get_task("tumour")
    train_set, _ = t.datasets(t.load_site(SiteSource("s", root / "nifti-1"), config), {})
    torch.manual_seed(0)
    net = t.build_model(config)
    functorch_layers, empty_batches = set(), []
    per_sample = grad_sample_module.ft_compute_per_sample_gradient
    monkeypatch.setattr(
        grad_sample_module,
        "ft_compute_per_sample_gradient",
        lambda layer, *a: functorch_layers.add(type(layer).__name__) or per_sample(layer, *a),
    )
    noise_only = training._empty_per_sample_gradients
    monkeypatch.setattr(
        training, "_empty_per_sample_gradients", lambda p: empty_batches.append(noise_only(p))
    )
    # seeded sampling (research switch) so that this run surely draws empty batches
    local = LocalTraining(epochs=3, batch_size=1, lr=0.01, optimizer="adam", seed=1, seeded_noise=True)
    dp = DPConfig(noise_multiplier=1.0)
    mechanism = local_mechanism(dp, len(train_set), local, delta=1e-3)
    out = train_model(
        net, train_set, t.loss, local, dp, mechanism=mechanism, grad_sample_mode=t.grad_sample_mode
    )

    assert t.grad_sample_mode == "functorch" and get_task("ckd").grad_sample_mode == "ew"
    assert functorch_layers == {"Conv3d", "GroupNorm", "Linear"}  # hooks would use none of it
    assert empty_batches and out.steps == 3 * len(train_set)
    assert sum(k for _, _, k in out.privacy_steps) == out.steps
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not any(hasattr(m, "ft_compute_sample_grad") for m in net.modules())  # nothing left behind


def test_features_model_trains_only_its_head_under_dp(root, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `features` model's filter bank and its public standardisation are fixed: DP-SGD (functorch)
    computes per-sample gradients of the linear head alone, and the reference travels unchanged."""
    from opacus.grad_sample import grad_sample_module

    config = _config("tumour", model="features")
    t = get_task("tumour")
    train_set, _ = t.datasets(t.load_site(SiteSource("s", root / "nifti-1"), config), {})
    net = t.build_model(config)
    assert [name for name, _ in net.named_parameters()] == ["head.weight", "head.bias"]
    mean, scale = phantom_reference(CONTRASTS)
    assert torch.equal(net.state_dict()["feature_mean"], mean)  # buffers: sent with the global model
    layers = set()
    per_sample = grad_sample_module.ft_compute_per_sample_gradient
    monkeypatch.setattr(
        grad_sample_module,
        "ft_compute_per_sample_gradient",
        lambda layer, *a: layers.add(type(layer).__name__) or per_sample(layer, *a),
    )
    local = LocalTraining(epochs=2, batch_size=4, lr=0.05, optimizer="adam")
    dp = DPConfig(noise_multiplier=1.0)
    mechanism = local_mechanism(dp, len(train_set), local, delta=1e-3)
    head = net.head.weight.detach().clone()
    train_model(net, train_set, t.loss, local, dp, mechanism=mechanism, grad_sample_mode=t.grad_sample_mode)
    assert layers == {"Linear"}
    assert not torch.equal(head, net.head.weight)
    assert torch.equal(net.feature_mean, mean) and torch.equal(net.feature_scale, scale)


def test_voxel_features_see_a_lesion_where_it_is_and_only_the_head_trains() -> None:
    """`voxel-features`: six fixed maps per contrast at full resolution (map-major: map k of contrast c at
    2k + c for two contrasts); a bright lesion stands out in its local contrast (voxel − blur(4)) at its
    voxels and nowhere far from it, a flat contrast gives nothing; only the per-voxel MLP has weights."""
    x = torch.zeros(1, 2, 16, 16, 8)
    x[0, 1, 6:9, 6:9, 3:5] = 3.0  # a lesion in the second contrast only
    maps = VoxelFeatures()(x)
    assert maps.shape == (1, 2 * VoxelFeatures.PER_CHANNEL, 16, 16, 8)
    local_contrast = maps[0, 2 * 4 + 1]
    peak = local_contrast[7, 7, 4]
    assert peak > 1.0 and local_contrast[:3, :3].abs().max() < 0.01 * peak  # 5+ voxels away
    assert maps[0, 0::2].abs().max() == 0
    net = build_segmenter("voxel-features", 3, 2)
    assert [name for name, _ in net.named_parameters()] == [
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"
    ]  # fmt: skip
    assert net(x).shape == (1, 2, 16, 16, 8)
    with pytest.raises(ConfigError, match="3D"):
        build_segmenter("voxel-features", 2, 2)


def test_fixed_features_layout_is_channel_then_pooled_maps() -> None:
    """A bright blob in one cell of channel 1 raises that channel's image maximum in that cell of the
    3 x 3 x 2 grid only: the order (channel, then image cells, mean, max, low-pass ...) the per-contrast
    reference relies on."""
    front = FixedFeatures()
    cells = 3 * 3 * 2
    x = torch.zeros(1, 2, 18, 18, 8)
    base = front(x).view(2, FixedFeatures.PER_CHANNEL)
    x[0, 1, 13:16, 1:4, 5:7] = 5.0  # cell (2, 0, 1) of the 3 x 3 x 2 grid
    out = front(x).view(2, FixedFeatures.PER_CHANNEL)
    assert out.numel() == 2 * (cells + 2 + 8 + 2)
    assert torch.equal(out[0], base[0])  # channel 0 untouched
    cell_max = out[1, :cells] - base[1, :cells]  # image map, cell maxima (C order over the grid)
    assert int(cell_max.argmax()) == 2 * 6 + 0 * 2 + 1 and float(cell_max.max()) == 5.0
    assert float(cell_max.sort().values[-2]) == 0.0
    assert float(out[1, cells + 1]) == 5.0  # global maximum of the image
    low_max = out[1, cells + 2 : cells + 10] - base[1, cells + 2 : cells + 10]  # low-pass, 2 x 2 x 2 cells
    assert int(low_max.argmax()) == 1 * 4 + 0 * 2 + 1 and 0 < float(low_max.max()) < 5.0  # blurred


def test_fixed_features_give_a_midline_lesion_its_own_cell() -> None:
    """A small enhancing lesion on the midline, low and central (where the sella is), is seen by exactly one
    image cell, the central-inferior one; on a 2 x 2 x 2 grid it would straddle the left-right split. Its
    mirror image gives the same features, and a lateral lesion's mirror image the same global ones."""
    front = FixedFeatures()
    x = torch.zeros(1, 1, 32, 32, 16)
    base = front(x)[0, :18]
    x[0, 0, 14:18, 14:18, 2:5] = 3.0  # left-right symmetric about the midline (i = 15.5)
    midline = front(x)[0]
    changed = torch.nonzero(midline[:18] - base).flatten().tolist()
    assert changed == [1 * 6 + 1 * 2 + 0]  # cell (1, 1, 0): central, central, inferior
    assert torch.equal(front(x.flip(2)), front(x))  # symmetric lesion: mirror-invariant
    lateral = torch.zeros(1, 1, 32, 32, 16)
    lateral[0, 0, 3:7, 14:18, 10:13] = 3.0
    a, b = front(lateral)[0], front(lateral.flip(2))[0]
    assert not torch.equal(a[:18], b[:18])  # the side is in the cells ...
    assert torch.allclose(a[18:20], b[18:20])  # ... not in the global statistics


def test_features_model_refuses_what_it_cannot_standardise() -> None:
    with pytest.raises(ConfigError, match="no reference standardisation for contrast"):
        phantom_reference(("t1ce", "dwi"))
    with pytest.raises(ConfigError, match="60 means and 60 positive scales"):
        build_classifier("features", 3, 2, 4, reference=(torch.zeros(90), torch.ones(90)))
    with pytest.raises(ConfigError, match="3D volumes"):
        get_task("tumour").build_model(_config("tumour", model="features", image_depth=0))


def test_multiclass_pooling_is_exact() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    p = rng.dirichlet(np.ones(4), 40)
    whole = multiclass_metrics(y, p)
    pooled = pool_multiclass([{**multiclass_metrics(y[:25], p[:25]), "num-examples": 25},
                              {**multiclass_metrics(y[25:], p[25:]), "num-examples": 15}])  # fmt: skip
    for key in ("accuracy", "sensitivity", "specificity", "f1"):
        assert pooled[key] == pytest.approx(whole[key])
