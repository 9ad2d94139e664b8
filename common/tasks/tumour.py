"""Brain-tumour classification from MRI: glioma, meningioma, pituitary, no tumour (or tumour / none)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from fedward.common.config import RunConfig
from fedward.common.data.mri.sample import CLASSES, NO_TUMOUR, UNLABELLED, MriSample, SkipFile
from fedward.common.errors import ConfigError
from fedward.common.imaging_models import CLASSIFIERS, build_classifier, phantom_reference
from fedward.common.metrics import binary_metrics, multiclass_metrics, pool_binary, pool_multiclass
from fedward.common.tasks.mri import MriTask, contrasts_of, model_name
from fedward.common.training import predict_proba


class TumourTask(MriTask):
    """4-class tumour type (CLASSES order), or binary tumour (1) / no tumour (0) with `tumour-binary`."""

    name = "tumour"
    grad_sample_mode = "functorch"  # 3D convolutions: 2.2-2.7x the non-private step vs 2.8-3.8x (hooks)

    def target(self, sample: MriSample, mask: torch.Tensor | None, config: RunConfig) -> torch.Tensor:
        """The class index (binary: 1 = any tumour)."""
        if sample.label == UNLABELLED:
            raise SkipFile("no class label (manifest row or class folder)")
        label = int(sample.label != NO_TUMOUR) if config.tumour_binary else sample.label
        return torch.tensor(label, dtype=torch.long)

    def stratum(self, target: torch.Tensor) -> int:
        """The class itself."""
        return int(target)

    def build_model(self, config: RunConfig) -> nn.Module:
        """Small CNN (default), DenseNet121 (2D or 3D after `image-depth`), or `features` (3D: a fixed filter
        bank standardised by the public phantom reference, and a linear head)."""
        name = model_name(config, CLASSIFIERS, "cnn")
        smallest = min(config.image_size, config.image_depth or config.image_size)
        if name == "densenet121" and smallest < 32:
            raise ConfigError(
                "densenet121 downsamples 32-fold: image-size and image-depth must be >= 32 (or "
                f"image-depth = 0 for 2D), got {config.image_size} x {config.image_depth}"
            )
        contrasts = contrasts_of(config)
        return build_classifier(
            name,
            2 if config.image_depth == 0 else 3,
            len(contrasts),
            2 if config.tumour_binary else len(CLASSES),
            reference=phantom_reference(contrasts) if name == "features" else None,
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (0 on an empty Poisson batch)."""
        if output.shape[0] == 0:
            return output.sum() * 0.0
        return F.cross_entropy(output, target)

    def evaluate(
        self, model: nn.Module, test: Dataset, device: torch.device, *, intervals: bool = False
    ) -> dict[str, float]:
        """Multi-class (or binary) metrics and confusion counts on the held-out patients."""
        if len(test) == 0:
            return {"num-examples": 0.0}
        probs, labels = predict_proba(model, test, device, batch_size=32)
        out = (
            binary_metrics(labels, probs[:, 1], intervals=intervals)
            if probs.shape[1] == 2
            else multiclass_metrics(labels, probs, intervals=intervals)
        )
        out["num-examples"] = float(len(labels))
        return {k: float(v) for k, v in out.items()}

    def pool(self, per_site: list[dict[str, float]]) -> dict[str, float]:
        """Exact pooled confusion-based metrics; example-weighted AUC and loss."""
        sites = [s for s in per_site if s.get("num-examples", 0) != 0]  # NaN: suppressed, counted
        if not sites:
            return {"num-examples": 0.0}
        return pool_binary(sites) if "tp" in sites[0] else pool_multiclass(sites)
