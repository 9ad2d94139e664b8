"""Two-stage tumour classification: a finished tumour-seg run's model segments each case at the site, a
small private MLP classifies the per-tumour features (common/data/mri/tumour_features.py).

The coordinator reads the segmenter run (run config `segmenter-run`) once and sends its final model with
every train and evaluate message as the ArrayRecord `segmenter`; sites never send it back. A site
segments each of its cases once per segmenter (cached by the arrays' digest), in eval mode, without
gradients; the feature vectors stay at the site. Classes, labels, split and metrics are the tumour task's.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fedward.common.config import RunConfig
from fedward.common.data.mri.patients import PatientSampled
from fedward.common.data.mri.sample import CLASSES
from fedward.common.data.mri.tumour_features import feature_names, tumour_features
from fedward.common.errors import ConfigError
from fedward.common.imaging_models import SEGMENTERS, build_segmenter
from fedward.common.models import TabularMLP
from fedward.common.tasks.base import InputRun, RunInputs, SiteData
from fedward.common.tasks.mri import MriTensors, contrasts_of, model_name
from fedward.common.tasks.tumour import TumourTask

SEGMENTER = "segmenter"  # the ArrayRecord's name in train and evaluate messages
KEY = "segmenter-run"  # the run-config key naming the segmenter run
SEG_TASK = "tumour-seg"
MATCHING = ("image-size", "image-depth", "mri-contrasts")  # the segmenter's input grid must be the run's
MODELS = ("mlp",)
_BATCH = 16
# (id of a site's SiteData, segmenter digest) -> (train features, test features); dropped with the site
_FEATURES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def arrays_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 over an ArrayRecord's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(record):
        array = record[name]
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def segmenter_state(config: RunConfig, run: InputRun) -> dict[str, torch.Tensor]:
    """The segmenter run's final weights, after checking that the run segments this run's input grid
    (image size, depth, contrasts) and that its weights fit the segmenter built for it; ConfigError
    naming `segmenter-run` otherwise."""
    ours = config.to_flower()
    for key in MATCHING:
        if run.run_config.get(key) != ours[key]:
            raise ConfigError(
                f"{KEY}: {run.folder} was trained with {key} = {run.run_config.get(key)!r}; this run has "
                f"{ours[key]!r} (the segmenter must see the classifier's input grid)"
            )
    state = dict(run.weights)
    dims = 2 if config.image_depth == 0 else 3
    model = _segmenter(dims, len(contrasts_of(config)), str(run.run_config.get("model")))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"{KEY}: {run.folder}'s model does not fit a {SEG_TASK} model of this run's grid"
        ) from exc
    return state


def _segmenter(spatial_dims: int, channels: int, name: str = SEGMENTERS[0]) -> nn.Module:
    """The tumour-seg task's model for this grid and channel count."""
    return build_segmenter(name if name in SEGMENTERS else SEGMENTERS[0], spatial_dims, channels)


@torch.no_grad()
def segment_features(segmenter: nn.Module, tensors: MriTensors) -> torch.Tensor:
    """Feature vectors (n, f) of every case in `tensors`: the segmenter's mask (eval mode, no gradients)
    of each image, then `tumour_features` with the case's voxel size."""
    segmenter.eval()
    rows = []
    for start in range(0, len(tensors), _BATCH):
        images = tensors.images[start : start + _BATCH]
        masks = segmenter(images).argmax(dim=1).numpy().astype(bool)
        for i, (image, mask) in enumerate(zip(images.numpy(), masks, strict=True)):
            rows.append(tumour_features(image, mask, tensors.voxels[start + i]))
    width = feature_width(tensors.images.ndim - 2, tensors.images.shape[1])
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, width))


def feature_width(spatial_dims: int, channels: int) -> int:
    """Length of a case's feature vector."""
    return len(feature_names(("c",) * channels, spatial_dims))


class TumourPipelineTask(TumourTask):
    """The tumour task's classes, from a small MLP on per-tumour features of a segmenter's masks."""

    name = "tumour-pipeline"
    grad_sample_mode = "hooks"  # a small MLP: Opacus' per-layer grad samplers

    def __init__(self) -> None:
        self.segmenter: Mapping[str, Any] | None = None  # the message's `segmenter` ArrayRecord

    input_runs = {KEY: SEG_TASK}  # noqa: RUF012 (read only)

    def run_inputs(self, config: RunConfig, runs: Mapping[str, InputRun]) -> RunInputs:
        """The segmenter run's final model as the record `segmenter`; its folder for provenance."""
        from flwr.app import ArrayRecord  # the coordinator builds records; the task module stays light

        if config.cross_site_local:  # its local-only messages (server/cross_site.py) carry no segmenter
            raise ConfigError(f"cross-site-local: not available with the {self.name} task; set it to false")
        state = segmenter_state(config, runs[KEY])
        return RunInputs(records={SEGMENTER: ArrayRecord(state)}, runs={KEY: runs[KEY].folder})

    def receive(self, content: Mapping[str, Any]) -> None:
        """Keep the message's segmenter."""
        self.segmenter = content.get(SEGMENTER)

    def features(self, site: SiteData) -> tuple[torch.Tensor, torch.Tensor]:
        """Train and test feature vectors of the site's cases, segmented once per segmenter digest."""
        if self.segmenter is None:
            raise ConfigError(f"no {SEGMENTER!r} record in the message (the coordinator sends it, {KEY})")
        digest = arrays_digest(self.segmenter)
        key = (id(site), digest)
        if key not in _FEATURES:
            images = site.train.images
            model = _segmenter(images.ndim - 2, images.shape[1])
            model.load_state_dict(self.segmenter.to_torch_state_dict())  # type: ignore[attr-defined]
            _FEATURES[key] = (segment_features(model, site.train), segment_features(model, site.test))
            weakref.finalize(site, _FEATURES.pop, key, None)
        return _FEATURES[key]

    def datasets(self, site: SiteData, shared: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Features per case: train one item per patient (a random study per access), test every study."""
        train_x, test_x = self.features(site)
        train = PatientSampled(TensorDataset(train_x, site.train.targets), site.train.patients)
        return train, TensorDataset(test_x, site.test.targets)

    def build_model(self, config: RunConfig) -> nn.Module:
        """A 2-layer MLP (tanh, 32 hidden) from the feature vector to the classes."""
        model_name(config, MODELS, MODELS[0])
        dims = 2 if config.image_depth == 0 else 3
        classes = 2 if config.tumour_binary else len(CLASSES)
        return TabularMLP(feature_width(dims, len(contrasts_of(config))), classes)
