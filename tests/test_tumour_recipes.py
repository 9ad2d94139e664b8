"""What a tumour run trains when the user does not say: the model's recipe (simulations/recipes.py), as
`fedward sim tumour` and tumour scenarios resolve it; every option or key given wins."""

from __future__ import annotations

from pathlib import Path

import typer

from fedward.common.config import RunConfig
from fedward.simulations import cli
from fedward.simulations.recipes import (
    FEATURES_RECIPE,
    IMAGE_MODEL,
    VOXEL_FEATURES_RECIPE,
    Recipe,
    planned_training,
)
from fedward.simulations.scenario import load_scenario

CNN_RECIPE = Recipe(rounds=5, local_epochs=40, batch_size=4, lr=0.002)  # the CLI's recipe before features


def _cli(*args: str) -> tuple[str, Recipe]:
    """The model and recipe `fedward sim tumour ARGS` trains: its options parsed by the real command."""
    command = typer.main.get_command(cli.app).commands["tumour"]  # type: ignore[attr-defined]
    p = command.make_context("tumour", list(args)).params
    task = "tumour-seg" if p["segmentation"] else "tumour"
    depth = 0 if p["fmt"] == cli.PhantomFormat.png else RunConfig().image_depth
    given = {k: p[k] for k in ("rounds", "local_epochs", "batch_size", "lr")}
    return planned_training(task, depth, p["model"], **given)


def test_default_tumour_command_trains_features_with_its_recipe() -> None:
    model, plan = _cli()
    assert model == "features" and plan == FEATURES_RECIPE
    assert plan != CNN_RECIPE and plan.optimizer == "adam"
    assert _cli("--no-dp", "--patients", "120") == ("features", FEATURES_RECIPE)


def test_cnn_and_unet_keep_their_recipe_and_segmentation_defaults_to_voxel_features() -> None:
    assert _cli("--model", "cnn") == ("cnn", CNN_RECIPE) == ("cnn", IMAGE_MODEL)
    assert _cli("--segmentation") == ("voxel-features", VOXEL_FEATURES_RECIPE)  # learns under DP, UNet not
    assert _cli("--segmentation", "--model", "unet") == ("unet", CNN_RECIPE)
    assert _cli("--segmentation", "--format", "png") == ("unet", CNN_RECIPE)  # voxel-features: 3D only
    assert _cli("--format", "png") == ("cnn", CNN_RECIPE)  # features takes 3D volumes only
    assert planned_training("tumour-pipeline", 16) == ("mlp", CNN_RECIPE)


def test_explicit_options_win_over_the_recipe() -> None:
    model, plan = _cli("--local-epochs", "3", "--lr", "0.2")
    assert model == "features"
    assert (plan.local_epochs, plan.lr) == (3, 0.2)
    assert (plan.rounds, plan.batch_size) == (FEATURES_RECIPE.rounds, FEATURES_RECIPE.batch_size)
    model, plan = _cli("--model", "cnn", "--rounds", "2", "--batch-size", "16")
    assert model == "cnn" and plan == Recipe(rounds=2, local_epochs=40, batch_size=16, lr=0.002)


def _scenario_config(tmp_path: Path, text: str) -> RunConfig:
    path = tmp_path / "scenario.toml"
    path.write_text('[scenario]\ntask = "tumour"\n' + text)
    values = load_scenario(path).run_config_values(num_sites=3, data_root="/data")
    return RunConfig.from_flower(values)


def test_tumour_scenario_defaults_to_features_and_its_recipe(tmp_path: Path) -> None:
    config = _scenario_config(tmp_path, "")
    assert config.model == "features" and config.num_server_rounds == FEATURES_RECIPE.rounds
    recipe = (config.local_epochs, config.batch_size, config.lr, config.optimizer)
    assert recipe == (FEATURES_RECIPE.local_epochs, FEATURES_RECIPE.batch_size, FEATURES_RECIPE.lr, "adam")


def test_tumour_scenario_cnn_png_and_explicit_keys(tmp_path: Path) -> None:
    cnn = _scenario_config(tmp_path, '[training]\nmodel = "cnn"\n')
    assert (cnn.model, cnn.local_epochs, cnn.batch_size, cnn.lr) == ("cnn", 40, 4, 0.002)
    png = _scenario_config(tmp_path, '[data]\nformat = "png"\n')
    assert (png.model, png.image_depth, png.local_epochs) == ("cnn", 0, 40)
    given = _scenario_config(tmp_path, "[training]\nbatch-size = 32\nlr = 0.01\n")
    assert (given.model, given.batch_size, given.lr) == ("features", 32, 0.01)
    assert given.local_epochs == FEATURES_RECIPE.local_epochs
    seg_path = tmp_path / "seg.toml"
    seg_path.write_text('[scenario]\ntask = "tumour-seg"\n')
    seg = RunConfig.from_flower(load_scenario(seg_path).run_config_values(num_sites=3, data_root="/d"))
    assert (seg.model, seg.local_epochs, seg.batch_size, seg.lr) == ("voxel-features", 4, 32, 0.1)
    assert seg.num_server_rounds == VOXEL_FEATURES_RECIPE.rounds
