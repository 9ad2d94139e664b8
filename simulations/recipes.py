"""Training recipes of the simulations: what a tumour model trains with when the user does not say.

`fedward sim tumour` and tumour scenarios (`[training]`, `[scenario] rounds`) take their model's rounds,
local epochs, batch size, learning rate and optimiser from here; an option or key the user gives wins.
Measured in BENCHMARKS.md ("Tumour utility", "At realistic site sizes", "Tumour defaults").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

FEATURES = "features"
CNN = "cnn"


@dataclass(frozen=True)
class Recipe:
    """How a model trains: FedAvg rounds, then at each site local epochs of (DP-)Adam at this batch and lr."""

    rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"

    def training(self) -> dict[str, Any]:
        """The `[training]` keys (snake_case) of this recipe: all but the rounds."""
        values = asdict(self)
        del values["rounds"]
        return values


# The CNN's recipe (also densenet121, the UNet and the pipeline's MLP under `fedward sim tumour`): many local
# epochs at a small batch; learns without DP, not under it (argmax stuck on the majority class).
IMAGE_MODEL = Recipe(rounds=5, local_epochs=40, batch_size=4, lr=0.002)

# The DP-suited `features` model (fixed filter bank + public standardisation + linear head): few steps
# of a large lr. Batch 8, not the 64 measured at 40-400 patients per site: at the default 60 patients per
# site (48 in training) a batch of 64 is one full-batch step per epoch (Poisson rate q = 1); batch 8 gives
# q = 1/6. Measured on the default command and at 120 patients per site (BENCHMARKS.md "Tumour defaults").
FEATURES_RECIPE = Recipe(rounds=10, local_epochs=1, batch_size=8, lr=0.05)

# The DP-suited `voxel-features` segmenter (fixed per-voxel features + a per-voxel MLP of 242 weights):
# larger batches and more local steps than `features` (whose batch 8 x 1 epoch collapsed to "no tumour" in
# one private run of three), measured at 4 sites x 40 patients (BENCHMARKS.md "A segmenter that learns
# under DP").
VOXEL_FEATURES = "voxel-features"
VOXEL_FEATURES_RECIPE = Recipe(rounds=10, local_epochs=4, batch_size=32, lr=0.1)

RECIPES: dict[str, Recipe] = {FEATURES: FEATURES_RECIPE, VOXEL_FEATURES: VOXEL_FEATURES_RECIPE}


def recipe(model: str) -> Recipe:
    """The recipe of a tumour model (`features` and `voxel-features` their own; every other image model the
    CNN's)."""
    return RECIPES.get(model, IMAGE_MODEL)


def default_classifier(image_depth: int) -> str:
    """The tumour classifier when none is named: `features` (learns under DP) for 3D volumes; `cnn` for 2D
    slices (`image-depth` 0, e.g. PNG folders), which `features` does not take."""
    return FEATURES if image_depth > 0 else CNN


def default_segmenter(image_depth: int) -> str:
    """The segmenter when none is named: `voxel-features` (learns under DP) for 3D volumes; `unet` for 2D
    slices, which `voxel-features` does not take."""
    return VOXEL_FEATURES if image_depth > 0 else "unet"


def default_model(task: str, image_depth: int) -> str:
    """The model of a tumour task when none is named: the classifier or segmenter above, or the pipeline's
    `mlp` (tumour-pipeline)."""
    if task == "tumour-seg":
        return default_segmenter(image_depth)
    return "mlp" if task == "tumour-pipeline" else default_classifier(image_depth)


def planned_training(
    task: str,
    image_depth: int,
    model: str = "",
    *,
    rounds: int | None = None,
    local_epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
) -> tuple[str, Recipe]:
    """The model a tumour run trains (`model`, else the task's default) and its recipe, in which every value
    the user gave (not None) wins."""
    name = model or default_model(task, image_depth)
    given = {"rounds": rounds, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr}
    return name, replace(recipe(name), **{k: v for k, v in given.items() if v is not None})
