"""Scenario files, partitions, baselines, sweeps and simulated faults (`fedward sim run|sweep`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fedward.client.policy import load_policy
from fedward.client.simulated_faults import drops_out, simulated_fault
from fedward.common.config import RunConfig
from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.partition import partition_indices
from fedward.common.errors import ConfigError
from fedward.simulations.baselines import load_sites, local_baselines, pooled_baseline
from fedward.simulations.scenario import load_scenario, parse_scenario, shipped_scenarios
from fedward.simulations.scenario_sites import prepare_scenario_sites
from fedward.simulations.sweep import parse_over, run_sweep

TINY = """
[scenario]
description = "two sites, two rounds, no DP"
sites = 2
rounds = 2

[privacy]
dp = false
"""


def _write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _config(scenario, data_root: Path, num_sites: int) -> RunConfig:
    return RunConfig.from_flower(scenario.run_config_values(num_sites=num_sites, data_root=str(data_root)))


# ---------------------------------------------------------------- parsing


def test_shipped_scenarios_are_valid_and_documented() -> None:
    files = shipped_scenarios()
    assert len(files) >= 4
    for path in files:
        scenario = load_scenario(path)
        assert scenario.name == path.stem and scenario.scenario.description
        assert path.read_text().startswith("#")  # each file opens with an explanation


def test_valid_scenario_maps_to_run_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[scenario]
sites = 4
rounds = 3
seed = 7
[partition]
kind = "dirichlet"
alpha = 0.3
[training]
local-epochs = 2
[privacy]
epsilon = 1.5
[privacy.site-3]
epsilon-cap = 1.0
[strategy]
name = "fedtrimmedavg"
trim-beta = 0.25
[sites]
hostile = [1]
hostile-mode = "scale"
[run-config]
central-dp = true
""",
    )
    scenario = load_scenario(path)
    values = scenario.run_config_values(num_sites=4, data_root="/data", run_name="r")
    assert values["num-server-rounds"] == 3 and values["seed"] == 7 and values["local-epochs"] == 2
    assert values["dp"] is True and values["dp-target-epsilon"] == 1.5
    assert values["strategy"] == "fedtrimmedavg" and values["trim-beta"] == 0.25
    assert values["hostile-sites"] == "1" and values["hostile-mode"] == "scale"
    assert values["central-dp"] is True and values["data-root"] == "/data"
    assert values["min-sites"] == 1  # a site with its own policy may refuse rounds
    assert scenario.privacy.site_policies[3].epsilon_cap == 1.0
    assert RunConfig.from_flower(values).dirichlet_alpha == 0.3


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[partition]\nkinds = "iid"\n')
    with pytest.raises(ConfigError, match=r"scenario\.toml: partition\.kinds: unknown key"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[partition]\nkind = "random"', r"partition\.kind: Input should be 'iid'"),
        ('[scenario]\nsites = "3"', r"scenario\.sites: Input should be a valid integer"),
        ("[partition]\nalpha = 0.5", r"partition\.alpha: only used with kind = 'dirichlet'"),
        ('[partition]\nkind = "natural"', r"partition\.column: required"),
        ("[sites]\nhostile = [3]", r"sites\.hostile: site indices must be 0\.\.2"),
        ('[strategy]\nname = "fedfoo"', r"strategy\.name: expected one of"),
        ("[strategy]\ntrim-beta = 0.7", r"strategy\.trim-beta: Input should be less than 0\.5"),
        ("[privacy.site-1]\ndelta = 1e-5", r"privacy\.site-1\.epsilon-cap: required key is missing"),
        (
            "[privacy]\ndp = false\n[privacy.site-0]\nepsilon-cap = 1.0",
            r"privacy\.site-N: a site policy requires DP",
        ),
        ("[privacy.site-9]\nepsilon-cap = 1.0", r"privacy\.site-9: there is no site 9"),
        ("[run-config]\ndp = false", r"run-config\.dp \(set by the scenario: privacy\.dp\)"),
        ("[run-config]\nnum-rounds = 3", r"run-config\.num-rounds: unknown run-config key"),
        ("[data]\npatients = 8", r"data: the \[data\] table describes tumour phantoms"),
        ('[scenario]\ntask = "tumour"\n[partition]\nkind = "quantity"', r"partition\.kind: tumour phantoms"),
        ('[training]\nmodel = "cnn"', r"training\.model: expected one of logreg, mlp for ckd"),
        ("[hospital]\nx = 1", r"hospital: unknown table"),
        ("[scenario\nsites = 3", r"not valid TOML"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text + "\n", "bad.toml")
    with pytest.raises(ConfigError, match=r"scenario .*bad\.toml: .*" + expected):
        load_scenario(path)


def test_simulated_fault_keys_follow_the_run_config() -> None:
    document = {"sites": {"dropout": 0.2, "stragglers": [1], "straggler-seconds": 1.5}}
    if "sim_dropout" in RunConfig.model_fields:  # wired into the client
        values = parse_scenario(document).run_config_values(num_sites=3)
        assert values["sim-dropout"] == 0.2 and values["sim-stragglers"] == "1"
        assert values["min-sites"] == 1  # a dropped site must not stop the run
    else:
        with pytest.raises(ConfigError, match=r"sites\.dropout: this build's run config has no key"):
            parse_scenario(document)


def test_sweep_values_change_the_scenario() -> None:
    scenario = parse_scenario({"partition": {"kind": "dirichlet", "alpha": 0.5}})
    assert scenario.with_value("epsilon", "inf").privacy.private is False
    private = scenario.with_value("epsilon", "0.5")
    assert private.privacy.private and private.run_config_values(num_sites=3)["dp-target-epsilon"] == 0.5
    assert scenario.with_value("alpha", "0.1").partition.alpha == 0.1
    assert scenario.with_value("sites", "5").num_sites == 5
    with pytest.raises(ConfigError, match=r"strategy\.name"):
        scenario.with_value("strategy", "nope")
    with pytest.raises(ConfigError, match="rounds='x'"):
        scenario.with_value("rounds", "x")
    with pytest.raises(ConfigError, match="sweeping alpha needs 'dirichlet'"):
        parse_scenario({}).with_value("alpha", "0.1")


# ---------------------------------------------------------------- partitions


@pytest.fixture(scope="module")
def ckd_labels() -> np.ndarray:
    from fedward.common.datasets import ckd_csv_path

    return load_ckd_csv(ckd_csv_path(), strict=False).y


@pytest.mark.parametrize(
    ("scheme", "options"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.5}),
        ("quantity", {"sizes": "linear"}),
        ("quantity", {"sizes": "square"}),
        ("pathological", {"classes_per_site": 1}),
        ("pathological", {"classes_per_site": 2}),
    ],
)
def test_partitions_cover_every_ckd_row_once(ckd_labels: np.ndarray, scheme: str, options: dict) -> None:
    parts = partition_indices(ckd_labels, 3, scheme, seed=1, **options)
    joined = np.concatenate(parts)
    assert len(joined) == len(ckd_labels) == len(np.unique(joined))
    again = partition_indices(ckd_labels, 3, scheme, seed=1, **options)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


def test_pathological_sites_hold_at_most_k_classes(ckd_labels: np.ndarray) -> None:
    parts = partition_indices(ckd_labels, 4, "pathological", classes_per_site=1, seed=0)
    assert all(len(np.unique(ckd_labels[p])) == 1 for p in parts)
    assert {int(ckd_labels[p][0]) for p in parts} == {0, 1}  # first-deterministic: every class used
    with pytest.raises(ConfigError, match="classes-per-site must be between 1 and the 2 classes"):
        partition_indices(ckd_labels, 3, "pathological", classes_per_site=3)


def test_quantity_skew_gives_unequal_sizes(ckd_labels: np.ndarray) -> None:
    linear = [len(p) for p in partition_indices(ckd_labels, 4, "quantity", sizes="linear", seed=0)]
    square = [len(p) for p in partition_indices(ckd_labels, 4, "quantity", sizes="square", seed=0)]
    assert linear == sorted(linear) and linear[-1] >= 3 * linear[0]
    assert square[-1] / square[0] > linear[-1] / linear[0]
    with pytest.raises(ConfigError, match="fewer than 2"):
        partition_indices(ckd_labels, 6, "quantity", sizes="exponential")


def test_natural_partition_follows_the_column(ckd_labels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    groups = rng.choice(["royal-free", "st-marys", "guys"], size=len(ckd_labels))
    parts = partition_indices(ckd_labels, 3, "natural", groups=groups)
    for part, hospital in zip(parts, ["guys", "royal-free", "st-marys"], strict=True):  # sorted ids
        assert set(groups[part]) == {hospital} and len(part) == (groups == hospital).sum()
    with pytest.raises(ConfigError, match="has 3 groups"):
        partition_indices(ckd_labels, 4, "natural", groups=groups)


def test_natural_scenario_splits_a_csv_by_hospital(tmp_path: Path, ckd_csv: Path) -> None:
    table = pd.read_csv(ckd_csv, dtype=str, keep_default_na=False)
    table["Hospital"] = np.where(np.arange(len(table)) % 3 == 0, "north", "south")
    table.to_csv(tmp_path / "ckd-hospitals.csv", index=False)
    text = '[scenario]\ndata = "ckd-hospitals.csv"\n[partition]\nkind = "natural"\ncolumn = "hospital"\n'
    scenario = load_scenario(_write(tmp_path, text))
    sites = prepare_scenario_sites(scenario, tmp_path / "sites")
    assert [s.natural_id for s in sites] == ["north", "south"]
    for site in sites:
        rows = pd.concat([pd.read_csv(site.folder / f, dtype=str) for f in ("train.csv", "test.csv")])
        assert set(rows["Hospital"]) == {site.natural_id}
    assert sum(s.num_train + s.num_test for s in sites) == 400
    report = json.loads((tmp_path / "sites" / "partition.json").read_text())
    assert [s["natural-id"] for s in report["sites"]] == ["north", "south"]
    wrong = load_scenario(
        _write(tmp_path, text.replace('column = "hospital"', 'column = "ward"'), "wrong.toml")
    )
    with pytest.raises(ConfigError, match=r"wrong\.toml: partition\.column: .* has no column 'ward'"):
        prepare_scenario_sites(wrong, tmp_path / "other")
    three = load_scenario(_write(tmp_path, text.replace("[scenario]", "[scenario]\nsites = 3"), "three.toml"))
    with pytest.raises(ConfigError, match=r"scenario\.sites: 3, but the column has 2 values"):
        prepare_scenario_sites(three, tmp_path / "three")


def test_site_policy_file_is_written_and_valid(tmp_path: Path) -> None:
    scenario = parse_scenario({"privacy": {"epsilon": 3.0, "site-2": {"epsilon-cap": 1.5}}}, "p.toml")
    sites = prepare_scenario_sites(scenario, tmp_path)
    assert [s.policy for s in sites[:2]] == [None, None]
    policy = load_policy(tmp_path / "site-2" / "policy.toml")
    assert policy.epsilon_cap == 1.5 and policy.allowed_tasks == ["ckd"]
    assert policy.delta == pytest.approx(1 / (10 * sites[2].num_train))


# ---------------------------------------------------------------- baselines


def test_pooled_and_local_baselines_on_ckd(tmp_path: Path) -> None:
    scenario = parse_scenario({"scenario": {"sites": 3, "rounds": 5}, "privacy": {"dp": False}})
    prepared = prepare_scenario_sites(scenario, tmp_path)
    config = _config(scenario, tmp_path, 3).model_copy(update={"device": "cpu"})
    sites = load_sites(config, tmp_path, 3)
    pooled = pooled_baseline(config, sites)
    assert pooled["overall"]["accuracy"] > 0.9 and pooled["overall"]["num-examples"] == 81
    assert set(pooled["sites"]) == {"site-0", "site-1", "site-2"} and math.isinf(pooled["epsilon"])
    assert pooled["steps"] == 5 * math.ceil(sum(s.num_train for s in prepared) / 16)
    local = local_baselines(config, sites)
    assert set(local["sites"]) == {"site-0", "site-1", "site-2"}
    for site, metrics in zip(prepared, local["sites"].values(), strict=True):
        assert 0.5 <= metrics["accuracy"] <= 1.0 and metrics["num-examples"] == site.num_test
        assert metrics["steps"] == 5 * math.ceil(site.num_train / 16) and metrics["refused"] is None
    assert local["mean-over-sites"]["accuracy"] == pytest.approx(
        np.mean([m["accuracy"] for m in local["sites"].values()])
    )


def test_local_baseline_honours_each_sites_dp_policy(tmp_path: Path) -> None:
    document = {
        "scenario": {"sites": 2, "rounds": 4},
        "privacy": {"epsilon": 2.0, "site-1": {"epsilon-cap": 1.5}},
    }
    scenario = parse_scenario(document)
    prepared = prepare_scenario_sites(scenario, tmp_path)
    config = _config(scenario, tmp_path, 2).model_copy(update={"device": "cpu"})
    local = local_baselines(config, load_sites(config, tmp_path, 2), [s.policy for s in prepared])
    free, capped = local["sites"]["site-0"], local["sites"]["site-1"]
    assert free["refused"] is None and 1.5 < free["epsilon"] <= 2.0 + 0.05
    assert free["steps"] == 4 * math.ceil(prepared[0].num_train / 16)
    assert "epsilon cap of 1.5" in capped["refused"] and 0 < capped["epsilon"] <= 1.5
    per_round = math.ceil(prepared[1].num_train / 16)
    assert capped["steps"] in {per_round, 2 * per_round, 3 * per_round}  # stopped before round 4


# ---------------------------------------------------------------- simulated faults


def test_dropout_is_seeded_and_has_the_asked_rate() -> None:
    draws = [drops_out(3, r, p, 0.3) for r in range(1, 201) for p in range(5)]
    assert draws == [drops_out(3, r, p, 0.3) for r in range(1, 201) for p in range(5)]
    assert 0.25 < np.mean(draws) < 0.35
    assert not any(drops_out(3, r, 0, 0.0) for r in range(50))


def test_faults_apply_only_to_simulated_sites() -> None:
    config = SimpleNamespace(seed=0, sim_dropout=0.999, sim_stragglers="1", sim_straggler_seconds=2.0)
    simulated = SimpleNamespace(node_config={"partition-id": 1})
    assert simulated_fault(simulated, config, 1, 1).dropped  # type: ignore[arg-type]
    config.sim_dropout = 0.0
    straggler = simulated_fault(simulated, config, 1, 1)  # type: ignore[arg-type]
    assert not straggler.dropped and straggler.delay_seconds == 2.0
    assert simulated_fault(simulated, config, 0, 1).delay_seconds == 0.0  # type: ignore[arg-type]
    real = SimpleNamespace(node_config={"data-dir": "/data"})
    assert simulated_fault(real, config, 1, 1).delay_seconds == 0.0  # type: ignore[arg-type]


# ---------------------------------------------------------------- sweeps


def test_parse_over() -> None:
    assert parse_over("epsilon=0.5,1, 3,inf") == ("epsilon", ["0.5", "1", "3", "inf"])
    for bad in ("lr=0.1,0.2", "epsilon", "epsilon=", "epsilon=1,1"):
        with pytest.raises(ConfigError, match="--over"):
            parse_over(bad)


def test_sweep_runs_the_grid_and_summarises(tmp_path: Path) -> None:
    scenario = parse_scenario({"scenario": {"name": "toy", "seed": 10}})
    seen: list[tuple[str, int, bool, float]] = []

    def fake_run(variant, run_dir: Path) -> dict:
        eps = variant.privacy.epsilon
        seen.append((run_dir.name, variant.scenario.seed, variant.privacy.private, eps))
        if eps == 8:
            from fedward.common.errors import FedwardError

            raise FedwardError("flwr failed")
        noise = (variant.scenario.seed - 10) * 0.02
        acc = (0.99 if math.isinf(eps) else 0.9) + noise
        sites = {"site-0": {"accuracy": acc, "epsilon": eps}}
        return {
            "federated": {"overall": {"accuracy": acc}, "sites": sites},
            "pooled": {"overall": {"accuracy": 1.0}},
            "local": {"overall": {"accuracy": 0.8}},
        }

    result = run_sweep(scenario, "epsilon", ["1", "8", "inf"], 2, tmp_path / "sw", fake_run)
    assert [s[0] for s in seen[:2]] == ["toy-epsilon-1-s10", "toy-epsilon-1-s11"]
    assert (seen[-1][2], seen[0][2]) == (False, True)  # inf: DP off
    fed = result["summary"]["1"]["federated"]
    assert (
        fed["mean"] == pytest.approx(0.91)
        and fed["sd"] == pytest.approx(0.02 / math.sqrt(2))
        and fed["n"] == 2
    )
    assert result["summary"]["inf"]["pooled"] == {"mean": 1.0, "sd": 0.0, "n": 2}
    assert result["summary"]["8"]["federated"]["n"] == 0
    assert sum("error" in r for r in result["runs"]) == 2
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["summary"]["1"]["local"]["mean"] == 0.8 and saved["runs"][0]["epsilon-spent"] == 1.0
    png = (tmp_path / "sw" / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_sim_run_writes_federated_pooled_and_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fedward.simulations.cli import app

    monkeypatch.setenv("FEDWARD_DEVICE", "cpu")
    path = _write(tmp_path, TINY, "tiny.toml")
    result = CliRunner().invoke(
        app, ["run", str(path), "--name", "tiny", "--runs-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    run = tmp_path / "runs" / "tiny"
    payload = json.loads((run / "baselines.json").read_text())
    for arm in ("federated", "pooled", "local"):
        assert set(payload[arm]["sites"]) == {"site-0", "site-1"}
        assert 0.8 <= payload[arm]["overall"]["accuracy"] <= 1.0
    assert payload["federated"]["rounds-completed"] == 2 and payload["metric"] == "accuracy"
    assert payload["budget"]["steps"]["pooled"] <= payload["budget"]["steps"]["federated"]
    assert json.loads((run / "summary.json").read_text())["rounds-completed"] == 2
    assert "federated vs pooled vs local" in result.output


def test_tumour_scenario_sites_of_unequal_size_on_mni_anatomy(tmp_path: Path) -> None:
    text = '[scenario]\ntask = "tumour"\nsites = 2\n[data]\npatients = [4, 6]\nanatomy = "mni"\nslices = 8\n'
    sites = prepare_scenario_sites(load_scenario(_write(tmp_path, text)), tmp_path / "data")
    counts = [len(pd.read_csv(site.folder / "manifest.csv")["patient_id"].unique()) for site in sites]
    assert counts == [4, 6]
    wrong = _write(tmp_path, text.replace("sites = 2", "sites = 3"), "bad.toml")
    with pytest.raises(ConfigError, match=r"data\.patients: 2 site sizes for 3 sites"):
        prepare_scenario_sites(load_scenario(wrong), tmp_path / "other")


def test_tumour_phantoms_are_written_at_the_models_input_depth_unless_told(tmp_path: Path) -> None:
    """No resampling by default: 12-slice phantoms interpolated to the 16-slice input cost the private
    `features` model about 2 points of AUC (its public standardisation is computed at that depth)."""
    import nibabel as nib

    text = '[scenario]\ntask = "tumour"\nsites = 2\n[data]\npatients = 4\nformat = "nifti"\n'
    for extra, depth in (("", RunConfig().image_depth), ("slices = 8\n", 8)):
        root = tmp_path / f"data-{depth}"
        prepare_scenario_sites(load_scenario(_write(tmp_path, text + extra, f"s{depth}.toml")), root)
        volumes = sorted(root.rglob("*.nii.gz"))
        assert volumes and {nib.load(v).shape[-1] for v in volumes} == {depth}
