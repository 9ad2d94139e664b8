"""Image models for the tumour tasks. All pass Opacus' ModuleValidator and train under DP-SGD."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedward.common.errors import ConfigError

CLASSIFIERS = ("cnn", "densenet121", "features")
SEGMENTERS = ("unet", "voxel-features")


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


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _blur3d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, X, Y, Z), each channel on its own, edges replicated."""
    radius, channels = (len(kernel) - 1) // 2, x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        weight = kernel.view(shape).repeat(channels, 1, 1, 1, 1)
        x = F.conv3d(F.pad(x, pad, mode="replicate"), weight, groups=channels)
    return x


class FixedFeatures(nn.Module):
    """A fixed (untrained, parameter-free) 3D front in front of a linear head: few, localised features.

    Per input channel, two maps, each max-pooled over a grid and summarised by its global mean and
    maximum: the image over a 3 × 3 × 2 grid (its central-inferior cell holds the sella, so a small
    midline enhancing lesion such as a pituitary adenoma has a cell of its own instead of straddling the
    midline) and the σ = 2 voxel low-pass image over a 2 × 2 × 2 grid (large lesions, oedema).
    Output (B, C · PER_CHANNEL), ordered channel, then [image cell maxima (C order over the grid), image
    mean, image maximum, low-pass cell maxima, low-pass mean, low-pass maximum].

    With nothing to learn in front of the head, DP-SGD's noise spreads over a few dozen weights instead of
    thousands (Tramèr & Boneh 2021); keeping the head small matters as much as the features (MNI-anatomy
    phantoms: these 60 features for two contrasts reach 97 % of pooled AUC at ε = 3 and 85 % at ε = 1, where
    the earlier 180-feature bank reached 92 % and 80 %; BENCHMARKS.md).
    """

    GRIDS = ((3, 3, 2), (2, 2, 2))  # image, low-pass
    PER_CHANNEL = sum(math.prod(g) + 2 for g in GRIDS)  # cell maxima, global mean and maximum

    def __init__(self, sigma: float = 2.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.register_buffer("kernel", _gaussian_kernel(sigma), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return _blur3d(x, self.kernel)

    @staticmethod
    def _pooled(maps: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, C, cells + 2): cell maxima, global mean, global maximum."""
        return torch.cat(
            [
                F.adaptive_max_pool3d(maps, grid).flatten(2),
                maps.mean((2, 3, 4))[..., None],
                maps.amax((2, 3, 4))[..., None],
            ],
            dim=2,
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image_grid, low_grid = self.GRIDS
        per_channel = torch.cat([self._pooled(x, image_grid), self._pooled(self._blur(x), low_grid)], dim=2)
        return per_channel.flatten(1)


class FeatureClassifier(nn.Module):
    """`FixedFeatures`, standardised by a fixed reference (`feature_mean`, `feature_scale`: buffers, so
    they travel with the model and are never trained), then one linear layer.

    The reference must not come from any site's training data (it is not private): `reference_for`
    gives a public one per contrast; without one the features are used unscaled.
    """

    def __init__(self, in_channels: int, num_classes: int, reference: tuple | None = None) -> None:
        super().__init__()
        self.front = FixedFeatures()
        dim = in_channels * FixedFeatures.PER_CHANNEL
        mean, scale = reference if reference is not None else (torch.zeros(dim), torch.ones(dim))
        mean, scale = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if mean.shape != (dim,) or scale.shape != (dim,) or bool((scale <= 0).any()):
            raise ConfigError(
                f"features model: the reference needs {dim} means and {dim} positive scales "
                f"({in_channels} channel(s)), got shapes {tuple(mean.shape)} and {tuple(scale.shape)}"
            )
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_scale", scale)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.front(x) - self.feature_mean) / self.feature_scale)


def phantom_reference(contrasts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The public (phantom-derived) standardisation of `FixedFeatures` for these input contrasts, in
    channel order (common/imaging_reference.py); ConfigError for a contrast it does not cover.

    Computed on a SIZE × SIZE × DEPTH grid (32 × 32 × 16); other grids use the same numbers, which fit
    the image features closely and the low-pass ones roughly (σ is in voxels). On real MRI it is a prior
    from synthetic data (with the earlier filter bank, a reference from phantoms of the other anatomy still
    lifted ε = 3 AUC from 0.89 unscaled to 0.92 on simple phantoms, against 0.98 with a matched one)."""
    from fedward.common.imaging_reference import REFERENCE

    missing = [c for c in contrasts if c not in REFERENCE]
    if missing:
        raise ConfigError(
            f"features model: no reference standardisation for contrast(s) {missing}; "
            f"common/imaging_reference.py covers {sorted(REFERENCE)}"
        )
    mean = torch.tensor([v for c in contrasts for v in REFERENCE[c][0]])
    scale = torch.tensor([v for c in contrasts for v in REFERENCE[c][1]])
    return mean, scale


def build_classifier(
    name: str, spatial_dims: int, in_channels: int, num_classes: int, reference: tuple | None = None
) -> nn.Module:
    """`cnn` (small, CPU default), MONAI `densenet121` with GroupNorm and out-of-place ReLU, or `features`
    (3D only: a fixed filter bank, standardised by `reference` (mean, scale), and a linear head)."""
    if name == "cnn":
        return SmallCNN(spatial_dims, in_channels, num_classes)
    if name == "features":
        if spatial_dims != 3:
            raise ConfigError("model 'features' takes 3D volumes: set image-depth > 0")
        return FeatureClassifier(in_channels, num_classes, reference)
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


class VoxelFeatures(nn.Module):
    """Fixed per-voxel features of each contrast (no parameters, nothing learned from any data): the voxel,
    its Gaussian blurs at σ = 1, 2 and 4 voxels, and the local contrasts voxel − blur(4) and blur(1) −
    blur(4). The loader has already standardised each contrast over the brain's voxels."""

    SIGMAS = (1.0, 2.0, 4.0)
    PER_CHANNEL = 6

    def __init__(self) -> None:
        super().__init__()
        for i, sigma in enumerate(self.SIGMAS):
            self.register_buffer(f"kernel{i}", _gaussian_kernel(sigma), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blur1, blur2, blur4 = (_blur3d(x, getattr(self, f"kernel{i}")) for i in range(len(self.SIGMAS)))
        return torch.cat([x, blur1, blur2, blur4, x - blur4, blur1 - blur4], dim=1)


class VoxelSegmenter(nn.Module):
    """`VoxelFeatures`, then the same small MLP at every voxel (1 × 1 × 1 convolutions: features → 16 →
    classes; 242 weights for two contrasts): a segmenter with few weights to noise under DP-SGD, in the
    spirit of handcrafted features under DP (Tramèr & Boneh 2021)."""

    def __init__(self, in_channels: int, num_classes: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.front = VoxelFeatures()
        self.head = nn.Sequential(
            nn.Conv3d(in_channels * VoxelFeatures.PER_CHANNEL, hidden, 1),
            nn.ReLU(),
            nn.Conv3d(hidden, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.front(x))


def build_segmenter(name: str, spatial_dims: int, in_channels: int, num_classes: int = 2) -> nn.Module:
    """MONAI `unet` with InstanceNorm (the MONAI default; Opacus has a grad sampler for it), or
    `voxel-features` (3D only: fixed per-voxel features and a per-voxel MLP)."""
    if name == "voxel-features":
        if spatial_dims != 3:
            raise ConfigError("model 'voxel-features' takes 3D volumes: set image-depth > 0")
        return VoxelSegmenter(in_channels, num_classes)
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
