"""Brain-tumour segmentation (whole tumour): Dice + cross-entropy loss, Dice and HD95."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedward.common.config import RunConfig
from fedward.common.data.mri.sample import MriSample, SkipFile
from fedward.common.imaging_models import SEGMENTERS, build_segmenter
from fedward.common.seg_metrics import pool_segmentation, segmentation_metrics
from fedward.common.tasks.mri import MriTask, contrasts_of, model_name

TUMOUR_VOXEL_WEIGHT = 10.0
"""Cross-entropy weight of a tumour voxel against a background one (tumour is a few per cent of a volume)."""
_dice = DiceLoss(to_onehot_y=True, softmax=True)  # per case (batch=False), both classes


def dice_ce_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each case plus its class-weighted voxel cross-entropy (normalised by the case's voxel
    count), averaged over cases.

    Each case's term depends on that case alone, as DP-SGD's per-sample clipping needs: a cross-entropy
    weighted over the whole batch (`nn.CrossEntropyLoss(weight=...)` divides by the batch's summed weights)
    would let one patient's mask rescale every other patient's gradient. Dice alone let a model sit at "no
    tumour anywhere" (the cases without tumour reward it fully and, once the softmax saturates, the tumour
    class gets no gradient): `voxel-features` did so in 2 of 3 seeds without DP; unweighted cross-entropy
    then pulled small tumours to background (BENCHMARKS.md)."""
    labels = target[:, 0].long()
    weights = torch.where(labels > 0, TUMOUR_VOXEL_WEIGHT, 1.0).to(output.dtype)
    voxel_ce = F.cross_entropy(output, labels, reduction="none") * weights
    return _dice(output, target.long()) + voxel_ce.flatten(1).mean(1).mean()


class TumourSegTask(MriTask):
    """Voxel-wise tumour (any label > 0) against background."""

    name = "tumour-seg"
    grad_sample_mode = "functorch"  # the 3D UNet: 2.0-2.6x the non-private step vs 2.7-2.9x (hooks)

    def target(self, sample: MriSample, mask: torch.Tensor | None, config: RunConfig) -> torch.Tensor:
        """The preprocessed mask (1, ...) as uint8."""
        if mask is None:
            raise SkipFile("no tumour mask (BraTS seg file or manifest mask column)")
        return mask

    def stratum(self, target: torch.Tensor) -> int:
        """1 when the case has tumour voxels."""
        return int(bool(target.any()))

    def build_model(self, config: RunConfig) -> nn.Module:
        """MONAI UNet with InstanceNorm, two output channels."""
        return build_segmenter(
            model_name(config, SEGMENTERS, "unet"),
            2 if config.image_depth == 0 else 3,
            len(contrasts_of(config)),
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice over both classes per case plus class-weighted voxel cross-entropy, averaged over the
        batch (0 on an empty Poisson batch)."""
        if output.shape[0] == 0:
            return output.sum() * 0.0
        return dice_ce_loss(output, target)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, test: Dataset, device: torch.device, *, intervals: bool = False
    ) -> dict[str, float]:
        """Dice, HD95 (mm), voxel counts and the training loss on the held-out cases."""
        if len(test) == 0:
            return {"num-examples": 0.0}
        model.to(device).eval()
        preds, targets, losses = [], [], []
        for xb, yb in DataLoader(test, batch_size=16):
            out = model(xb.to(device)).cpu()
            losses.append(float(dice_ce_loss(out, yb)) * len(yb))
            preds.append(out.argmax(dim=1, keepdim=True))
            targets.append(yb)
        voxels = getattr(test, "voxels", [[1.0] * (preds[0].ndim - 2)] * len(test))
        out = segmentation_metrics(torch.cat(preds), torch.cat(targets), voxels, intervals=intervals)
        out["loss"] = sum(losses) / len(test)
        out["num-examples"] = float(len(test))
        return {k: float(v) for k, v in out.items()}

    def pool(self, per_site: list[dict[str, float]]) -> dict[str, float]:
        """Case-weighted Dice and HD95, exact voxel Dice."""
        return pool_segmentation(per_site)
