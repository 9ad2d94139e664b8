"""In-process search for the `features` tumour model: fixed feature sets and recipes, FedAvg emulated.

Phantom sites are generated and preprocessed once per (anatomy, seed) as `fedward sim tumour` does and
cached (images only) under `--cache`. A candidate feature set is computed once per cache, standardised by
a public reference (phantoms of seed 1000, near-balanced, both anatomies, as
benchmarks/tumour_feature_reference.py does), then the linear head is trained as the federation trains
it: FedAvg over the sites, each site's rounds through `common/training.py` with its own DP plan
(`client/budget.py`: the run's target ε after the statistics release, δ from its patient count, Poisson
sampling, σ from OS entropy). The front is parameter-free, so training the head on precomputed features
gives the same per-sample gradients as the full model. FedAvg weights are the training counts, under DP
with the statistics release's Gaussian noise (as the federation weights its sites). Pooled = the head on the
union, without DP.

    nice -n 10 python -P benchmarks/tumour_feature_search.py --anatomy mni --seeds 0,1,2 --sets base,model \
        --recipes 20:64:0.03 --repeats 2

`base` is the session-6 filter bank (180 features for two contrasts), `model` the model's current front
(common/imaging_models.py), the other `fs_*` sets the candidates tried on the way (BENCHMARKS.md).

A screening tool: the real federations (benchmarks/tumour_utility.py) confirm what it finds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.common.config import RunConfig
from fedward.common.dp_release import release_entry
from fedward.common.imaging_models import FixedFeatures, _gaussian_kernel
from fedward.common.local_training import LocalTraining
from fedward.common.tasks import get_task
from fedward.common.training import train_model

Sites = list[dict[str, torch.Tensor]]


def build_sites(
    anatomy: str, seed: int, sizes: list[int], skew: float, contrasts: str, slices: int = 16
) -> Sites:
    """Phantom sites of `slices` slices, generated and preprocessed (to 16) as the benchmark does (train/test
    images and labels)."""
    from fedward.simulations.baselines import load_sites
    from fedward.simulations.phantoms import PhantomSpec, generate_site

    spec = PhantomSpec(size=32, slices=slices, contrasts=tuple(contrasts.split(",")), anatomy=anatomy)
    config = RunConfig(task="tumour", image_size=32, image_depth=16, mri_contrasts=contrasts,
                       min_sites=len(sizes), seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(sizes):
            generate_site(Path(tmp) / f"site-{i}", i, n, fmt="nifti", spec=spec, skew=skew, seed=seed)
        loaded = load_sites(config, Path(tmp), len(sizes))
    return [
        {"xtr": s.train.images, "ytr": s.train.targets, "xte": s.test.images, "yte": s.test.targets}
        for s in loaded
    ]


def cached(path: Path, make: Callable[[], Sites]) -> Sites:
    if path.exists():
        return torch.load(path)
    sites = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sites, path)
    return sites


# ------------------------------------------------------------------------------------- feature sets


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (σ in voxels), replicate padding, as the model's front."""
    kernel, channels = _gaussian_kernel(sigma), x.shape[1]
    radius = (len(kernel) - 1) // 2
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(
            F.pad(x, pad, mode="replicate"), kernel.view(shape).repeat(channels, 1, 1, 1, 1), groups=channels
        )
    return x


def old_features(x: torch.Tensor) -> torch.Tensor:
    """The session-6 filter bank (180 features for two contrasts): per channel, five maps (image, band-pass
    |x - b1|, |b1 - b2|, low-pass b2, gradient magnitude of b1), each 2x2x2 grid avg + max, mean, max."""
    b = x.shape[0]
    return pool(base_maps(x)).view(b, x.shape[1], -1)  # (channel, map, statistic) order


def pool(maps: torch.Tensor, grid: tuple[int, int, int] = (2, 2, 2), glob: bool = True) -> torch.Tensor:
    """(B, M, X, Y, Z) -> (B, M * stats): grid avg + max, global mean + max."""
    b = maps.shape[0]
    stats = [F.adaptive_avg_pool3d(maps, grid).flatten(2), F.adaptive_max_pool3d(maps, grid).flatten(2)]
    if glob:
        stats += [maps.mean((2, 3, 4))[..., None], maps.amax((2, 3, 4))[..., None]]
    return torch.cat(stats, dim=2).reshape(b, -1)


def asym_maps(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """|b - flip_LR(b)| on the left half only (the map is mirror-symmetric)."""
    b = blur(x, sigma)
    a = (b - b.flip(2)).abs()
    return a[:, :, : x.shape[2] // 2]


def brain_relative(x: torch.Tensor) -> torch.Tensor:
    """x minus the per-volume, per-channel median of the foreground (voxels above the volume mean)."""
    flat = x.flatten(2)
    out = []
    for i in range(flat.shape[0]):
        meds = []
        for c in range(flat.shape[1]):
            v = flat[i, c]
            meds.append(v[v > v.mean()].median())
        out.append(torch.stack(meds))
    med = torch.stack(out)[..., None, None, None]
    return x - med


def fs_base(x):
    return old_features(x).flatten(1)


def fs_model(x):
    """The model's current front (common/imaging_models.py)."""
    return FixedFeatures()(x)


def fs_asym(x):
    a = asym_maps(x, 1.0)
    return torch.cat([old_features(x).flatten(1), pool(a, (1, 2, 2))], 1)


def fs_asym2(x):
    a = torch.cat([asym_maps(x, 1.0), asym_maps(x, 2.0)], 1)
    return torch.cat([old_features(x).flatten(1), pool(a, (1, 2, 2))], 1)


def fs_asymonly(x):
    return pool(asym_maps(x, 1.0), (1, 2, 2))


def fs_asym_small(x):
    """Base minus the raw image and fine band-pass maps, plus asymmetry."""
    f = old_features(x).view(x.shape[0], x.shape[1], 5, 18)[:, :, [2, 3, 4]].flatten(1)
    return torch.cat([f, pool(asym_maps(x, 1.0), (1, 2, 2))], 1)


def fs_rel(x):
    return old_features(brain_relative(x)).flatten(1)


def fs_rel_asym(x):
    r = brain_relative(x)
    return torch.cat([old_features(r).flatten(1), pool(asym_maps(x, 1.0), (1, 2, 2))], 1)


def base_maps(x: torch.Tensor) -> torch.Tensor:
    """The session-6 five maps per channel, (B, C * 5, X, Y, Z)."""
    fine = blur(x, 1.0)
    coarse = blur(fine, math.sqrt(3.0))
    edges = torch.sqrt(sum(g**2 for g in torch.gradient(fine, dim=(2, 3, 4))))
    return torch.stack([x, (x - fine).abs(), (fine - coarse).abs(), coarse, edges], dim=2).flatten(1, 2)


def centre_box(maps: torch.Tensor) -> torch.Tensor:
    """Mean and max over the central-inferior box (middle half in x and y, lower half in z)."""
    x, y, z = maps.shape[2:]
    box = maps[:, :, x // 4 : 3 * x // 4, y // 4 : 3 * y // 4, : z // 2]
    return torch.cat([box.mean((2, 3, 4)), box.amax((2, 3, 4))], 1)


def fs_g322(x):
    return pool(base_maps(x), (3, 3, 2))


def fs_mid(x):
    return torch.cat([old_features(x).flatten(1), centre_box(base_maps(x))], 1)


def fs_mid_asym(x):
    return torch.cat(
        [old_features(x).flatten(1), centre_box(base_maps(x)), pool(asym_maps(x, 1.0), (1, 2, 2))], 1
    )


def select(x: torch.Tensor, maps: list[int], stats: list[int]) -> torch.Tensor:
    """Some of the session-6 maps and statistics (0-7 grid avg, 8-15 grid max, 16 mean, 17 max)."""
    f = old_features(x).view(x.shape[0], x.shape[1], 5, 18)
    return f[:, :, maps][..., stats].flatten(1)


AVG, MAX = [*range(8), 16], [*range(8, 16), 17]


def fs_avg(x):
    return select(x, [0, 1, 2, 3, 4], AVG)


def fs_max(x):
    return select(x, [0, 1, 2, 3, 4], MAX)


def fs_m0(x):
    return select(x, [0], AVG + MAX)


def fs_m1(x):
    return select(x, [1], AVG + MAX)


def fs_m2(x):
    return select(x, [2], AVG + MAX)


def fs_m3(x):
    return select(x, [3], AVG + MAX)


def fs_m4(x):
    return select(x, [4], AVG + MAX)


def fs_glob(x):
    return select(x, [0, 1, 2, 3, 4], [16, 17])


def stats(maps: torch.Tensor, grid: tuple[int, int, int], which: str = "ax") -> torch.Tensor:
    """Grid avg ("a") and/or max ("x") plus global mean and max, per map."""
    parts = []
    if "a" in which:
        parts.append(F.adaptive_avg_pool3d(maps, grid).flatten(2))
    if "x" in which:
        parts.append(F.adaptive_max_pool3d(maps, grid).flatten(2))
    parts += [maps.mean((2, 3, 4))[..., None], maps.amax((2, 3, 4))[..., None]]
    return torch.cat(parts, 2).flatten(1)


def per_map(x: torch.Tensor) -> list[torch.Tensor]:
    """The session-6 five maps, each (B, C, X, Y, Z)."""
    m = base_maps(x).view(x.shape[0], x.shape[1], 5, *x.shape[2:])
    return [m[:, :, i] for i in range(5)]


def fs_img332(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2))] + [stats(v, (2, 2, 2)) for v in m[1:]], 1)


def fs_lean(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2)), stats(m[3], (2, 2, 2)), stats(m[2], (1, 1, 1), "")], 1)


def fs_leaner(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "a")], 1)


def fs_lean_x(x):
    m = per_map(x)
    return torch.cat(
        [stats(m[0], (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "x"), stats(m[2], (1, 1, 1), "")], 1
    )


def fs_l1(x):
    return stats(per_map(x)[0], (3, 3, 2), "x")


def fs_l2(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2), "x"), stats(m[3], (1, 1, 1), "")], 1)


def fs_l5(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "x")], 1)


def fs_l6(x):
    fine = blur(x, 1.0)
    m = per_map(x)
    return torch.cat([stats(fine, (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "a")], 1)


def fs_l7(x):
    m = per_map(x)
    return torch.cat(
        [stats(m[0], (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "a"), stats(m[4], (1, 1, 1), "")], 1
    )


def fs_l8(x):
    m = per_map(x)
    return torch.cat([stats(m[0], (3, 3, 2), "x"), stats(m[3], (2, 2, 2), "ax")], 1)


SETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("fs_")
}


def features(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + 128]) for i in range(0, len(x), 128)])


# ----------------------------------------------------------------------------------------- training


def pooled_auc(task, feats: Sites, rounds: int, batch: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    head = nn.Linear(feats[0]["xtr"].shape[1], 4)
    union = TensorDataset(torch.cat([s["xtr"] for s in feats]), torch.cat([s["ytr"] for s in feats]))
    for r in range(rounds):
        train_model(head, union, task.loss, LocalTraining(1, batch, lr, seed * 1009 + r, "adam"), None)
    return evaluate(task, head, feats)


def evaluate(task, head: nn.Module, feats: Sites) -> float:
    per_site = [task.evaluate(head, TensorDataset(s["xte"], s["yte"]), torch.device("cpu")) for s in feats]
    return float(task.pool(per_site)["roc-auc"])


def round_lr(lr: float, schedule: str, server_round: int, rounds: int) -> float:
    """The learning rate of a round: `const`, or `cos` (cosine decay from lr to lr / 10 over the run)."""
    if schedule != "cos" or rounds == 1:
        return lr
    progress = (server_round - 1) / (rounds - 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def federated_auc(task, feats: Sites, eps: float | None, rounds: int, batch: int, lr: float, seed: int,
                  epochs: int = 1, schedule: str = "const",
                  noise_seed: int | None = None, stats_sigma: float = 0.0) -> float:  # fmt: skip
    """FedAvg of the head over the sites, each site under its own DP plan (None: no DP). Schedule `meanK`:
    constant lr, the mean of the last K global heads evaluated. `noise_seed`: DP noise and sampling drawn from
    it (the research switch), so that schedules can be compared on the same noise."""
    config = RunConfig(
        task="tumour", num_server_rounds=rounds, local_epochs=epochs, batch_size=batch, lr=lr,
        optimizer="adam", dp=eps is not None, dp_target_epsilon=eps or 1.0,
        seed=seed if noise_seed is None else noise_seed, dp_seeded_noise=noise_seed is not None,
        dp_statistics_noise_multiplier=stats_sigma,
    )  # fmt: skip
    stats_sigma = task.statistics_sigma(config)
    spent = (release_entry(stats_sigma),)
    plans = [SiteBudget(SitePrivacy(), None).plan(config, len(s["ytr"]), spent=spent) for s in feats]
    torch.manual_seed(seed)
    global_head = nn.Linear(feats[0]["xtr"].shape[1], 4)
    counts = torch.tensor([float(len(s["ytr"])) for s in feats])
    if eps is None:
        weights = counts
    else:  # the released noisy counts, as the federation weights its sites
        noise = torch.Generator()
        if noise_seed is not None:
            noise.manual_seed(noise_seed)
        else:
            noise.seed()  # OS entropy, without reseeding torch's global generator as torch.seed() does
        weights = (counts + stats_sigma * torch.randn(len(feats), generator=noise)).round().clamp_min(1.0)
    tail = int(schedule[4:]) if schedule.startswith("mean") else 1
    history: list[dict[str, torch.Tensor]] = []
    for r in range(1, rounds + 1):
        states = []
        for i, (s, plan) in enumerate(zip(feats, plans, strict=True)):
            head = nn.Linear(global_head.in_features, 4)
            head.load_state_dict(global_head.state_dict())
            local = replace(config.local_training(r, i), lr=round_lr(lr, schedule, r, rounds))
            train_model(head, TensorDataset(s["xtr"], s["ytr"]), task.loss, local,
                        config.privacy if plan else None, mechanism=plan)  # fmt: skip
            states.append({k: v.detach().clone() for k, v in head.state_dict().items()})
        avg = {
            k: sum(w * st[k] for w, st in zip(weights, states, strict=True)) / weights.sum()
            for k in states[0]
        }
        global_head.load_state_dict(avg)
        history = [*history, avg][-tail:]
    global_head.load_state_dict({k: sum(h[k] for h in history) / len(history) for k in history[0]})
    return evaluate(task, global_head, feats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy", default="mni")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--sets", default="base")
    parser.add_argument("--epsilons", default="1,3")
    parser.add_argument("--recipes", default="20:64:0.1", help="rounds:batch:lr[:epochs], comma-separated")
    parser.add_argument("--schedules", default="const", help="const, cos, meanK; comma-separated")
    parser.add_argument("--stats-sigma", type=float, default=0.0, help="release σ (0: the task's)")
    parser.add_argument("--federated", action="store_true", help="also FedAvg without DP (the no-DP twin)")
    parser.add_argument("--paired", action="store_true", help="the same DP noise for every schedule")
    parser.add_argument("--slices", type=int, default=16, help="slices the phantoms are written with")
    parser.add_argument("--sizes", default="40,120,250,400", help="patients per site")
    parser.add_argument("--skew", type=float, default=2.0, help="Dirichlet α of the sites' class mix")
    parser.add_argument("--repeats", type=int, default=1, help="DP runs per setting (noise varies)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fm-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fm-cache/search.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = get_task("tumour")
    sizes, contrasts = [int(n) for n in args.sizes.split(",")], "t1ce,flair"
    ref_sites = [
        s
        for anatomy in ("simple", "mni")
        for s in cached(
            args.cache / f"ref-{anatomy}.pt",
            lambda a=anatomy: build_sites(a, 1000, [60] * 4, 100.0, contrasts),
        )
    ]
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        key = f"{args.anatomy}-{args.sizes}-{args.skew:g}-{args.slices}-{seed}"
        sites = cached(
            args.cache / f"{key}.pt",
            lambda s=seed: build_sites(args.anatomy, s, sizes, args.skew, contrasts, args.slices),
        )
        print(f"data {args.anatomy} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        for name in args.sets.split(","):
            fn = SETS[name]
            ref = torch.cat([features(fn, torch.cat([s["xtr"], s["xte"]])) for s in ref_sites])
            mean, scale = ref.mean(0), ref.std(0).clamp_min(1e-3)
            feats = [
                {
                    "xtr": (features(fn, s["xtr"]) - mean) / scale,
                    "ytr": s["ytr"],
                    "xte": (features(fn, s["xte"]) - mean) / scale,
                    "yte": s["yte"],
                }
                for s in sites
            ]
            for recipe in args.recipes.split(","):
                parts = recipe.split(":")
                rounds, batch, lr = int(parts[0]), int(parts[1]), float(parts[2])
                epochs = int(parts[3]) if len(parts) > 3 else 1
                row = {"anatomy": args.anatomy, "seed": seed, "set": name, "dim": feats[0]["xtr"].shape[1],
                       "recipe": recipe}  # fmt: skip
                row["pooled"] = pooled_auc(task, feats, rounds * epochs, batch, lr, seed)
                if args.federated:
                    row["federated"] = federated_auc(task, feats, None, rounds, batch, lr, seed, epochs)
                for e in [float(v) for v in args.epsilons.split(",")]:
                    for schedule in args.schedules.split(","):
                        vals = [federated_auc(task, feats, e, rounds, batch, lr, seed, epochs, schedule,
                                              seed * 1000 + rep if args.paired else None,
                                              args.stats_sigma)
                                for rep in range(args.repeats)]  # fmt: skip
                        key = f"eps{e:g}" + ("" if schedule == "const" else f"-{schedule}")
                        row[key] = statistics.fmean(vals)
                        row[f"{key}-runs"] = vals
                        row[f"{key}-pct"] = row[key] / row["pooled"]
                shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
                print(json.dumps(shown), flush=True)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
