"""Image models for the tumour tasks. All pass Opacus' ModuleValidator and train under DP-SGD."""

from __future__ import annotations

import torch
from torch import nn

from fedward.common.errors import ConfigError

CLASSIFIERS = ("cnn", "densenet121")
SEGMENTERS = ("unet",)


def _conv(dims: int):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _pool(dims: int):
    return nn.MaxPool3d if dims == 3 else nn.MaxPool2d


class SmallCNN(nn.Module):
    """Two conv/GroupNorm/ReLU/max-pool stages; global average and max pooling; a linear head.

    Small on purpose (about 4 k weights in 3D): fast on CPU and less noise to add under DP-SGD. The
    max pool keeps small bright lesions (pituitary) visible that an average would wash out.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        conv, pool = _conv(spatial_dims), _pool(spatial_dims)
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width):
            layers += [conv(channels, out, 3, padding=1), nn.GroupNorm(4, out), nn.ReLU(), pool(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        adaptive = (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d) if spatial_dims == 3 else (
            nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # fmt: skip
        self.avg, self.max = adaptive[0](1), adaptive[1](1)
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x):
        f = self.features(x)
        return self.head(torch.cat([self.avg(f).flatten(1), self.max(f).flatten(1)], dim=1))


def build_classifier(name: str, spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """`cnn` (small, CPU default) or MONAI `densenet121` with GroupNorm and out-of-place ReLU."""
    if name == "cnn":
        return SmallCNN(spatial_dims, in_channels, num_classes)
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            act=("relu", {"inplace": False}),  # in-place ReLU breaks Opacus' backward hooks
            norm=("group", {"num_groups": 8}),  # BatchNorm mixes samples: not DP-SGD compatible
        )
    raise ConfigError(f"unknown model {name!r} for tumour classification; expected one of {CLASSIFIERS}")


def build_segmenter(name: str, spatial_dims: int, in_channels: int, num_classes: int = 2) -> nn.Module:
    """MONAI `unet` with InstanceNorm (the MONAI default; Opacus has a grad sampler for it)."""
    if name == "unet":
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=(8, 16, 32),
            strides=(2, 2),
            num_res_units=1,
            norm="instance",
        )
    raise ConfigError(f"unknown model {name!r} for tumour segmentation; expected one of {SEGMENTERS}")
