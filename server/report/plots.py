"""The report's figures as PNG files (matplotlib's object API and Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from fedward.server.report.data import (
    BOUNDED,
    RunData,
    cross_site_matrix,
    epsilon_series,
    metric_keys,
    number,
    overall_series,
    pooled_confusion,
    rounds_of,
    site_series,
)

DPI = 110
UNITS = {"hd95": "hd95 (mm)"}
FILES = (
    "metrics-per-round.png",
    "site-metrics.png",
    "epsilon.png",
    "cross-site.png",
    "confusion-matrix.png",
    "empirical-privacy.png",
)
LEAK_COLOUR = "#b32d2e"  # the report's red (html.py)


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report: its PNG, or a note saying why it is absent."""

    name: str
    title: str
    path: Path | None
    note: str = ""


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _round_axis(ax: Axes, rounds: list[int]) -> None:
    ax.set_xlabel("round")
    ax.set_xticks(rounds if len(rounds) <= 20 else rounds[:: math.ceil(len(rounds) / 20)])
    ax.grid(True, alpha=0.3)


def _ci_band(ax: Axes, run: RunData, key: str, rounds: list[int], colour) -> None:
    low = overall_series(run, f"{key}-ci-low")
    high = overall_series(run, f"{key}-ci-high")
    if any(not math.isnan(v) for v in low + high):
        ax.fill_between(rounds, low, high, color=colour, alpha=0.15, linewidth=0)


def metrics_per_round(run: RunData, out: Path) -> ReportFigure:
    """Overall metrics per round: bounded metrics in one panel, each other metric (loss, HD95) in its own."""
    title = "Overall metrics per round"
    bounded, others = metric_keys(run)
    if not bounded and not others:
        return ReportFigure("metrics-per-round", title, None, "No overall metrics were recorded.")
    rounds = rounds_of(run)
    panels = ([bounded] if bounded else []) + [[k] for k in others]
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    colours = _colours(len(bounded) + len(others))
    for index, keys in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for key in keys:
            colour = colours[(bounded + others).index(key)]
            ax.plot(rounds, overall_series(run, key), marker="o", color=colour, label=key)
            _ci_band(ax, run, key, rounds, colour)
        if keys is bounded:
            ax.set_ylim(-0.02, 1.02)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(UNITS.get(keys[0], keys[0]) if keys is not bounded else "overall (pooled over sites)")
        _round_axis(ax, rounds)
    return ReportFigure("metrics-per-round", title, _save(fig, out / "metrics-per-round.png"))


def site_metrics(run: RunData, out: Path) -> ReportFigure:
    """One panel per metric: each site's value per round, the overall value dashed."""
    title = "Per-site metrics per round"
    bounded, others = metric_keys(run)
    keys, sites = bounded + others, run.sites
    if not keys or not sites:
        return ReportFigure("site-metrics", title, None, "No per-site evaluations were recorded.")
    rounds, colours = rounds_of(run), _colours(len(sites))
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    for index, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, index + 1)
        for site, colour in zip(sites, colours, strict=True):
            ax.plot(rounds, site_series(run, site, key), marker="o", markersize=3, color=colour, label=site)
        ax.plot(rounds, overall_series(run, key), linestyle="--", color="black", label="overall")
        if key in bounded:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(UNITS.get(key, key))
        _round_axis(ax, rounds)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    fig.savefig(out / "site-metrics.png", dpi=DPI, format="png", facecolor="white")
    return ReportFigure("site-metrics", title, out / "site-metrics.png")


def epsilon_per_site(run: RunData, out: Path) -> ReportFigure:
    """Each site's cumulative ε per round, with the run's target and each site's lifetime cap."""
    title = "Privacy loss ε per site over rounds"
    sites = [s for s in run.sites if any(math.isfinite(e) for e in epsilon_series(run, s))]
    if not sites:
        why = "DP was off for this run." if run.config.get("dp") is False else "No finite ε was recorded."
        return ReportFigure("epsilon", title, None, why)
    rounds = rounds_of(run)
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>px*"
    for index, (site, colour) in enumerate(zip(sites, _colours(len(sites)), strict=True)):
        ax.plot(
            rounds,
            epsilon_series(run, site),
            marker=markers[index % len(markers)],
            markersize=max(3, 9 - index),  # later sites smaller, so equal ε stays visible
            color=colour,
            label=site,
        )
        caps = [number(((r.get("budget") or {}).get(site) or {}).get("epsilon-cap")) for r in run.rounds]
        finite = [c for c in caps if math.isfinite(c)]
        if finite:
            ax.axhline(finite[-1], color=colour, linestyle=":", linewidth=1, label=f"{site} lifetime cap")
    target = number(run.config.get("dp-target-epsilon"))
    if run.config.get("dp") and math.isfinite(target) and number(run.config.get("dp-noise-multiplier")) <= 0:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target ε = {target:g}")
    ax.set_ylabel("ε (cumulative over the run)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _round_axis(ax, rounds)
    return ReportFigure("epsilon", title, _save(fig, out / "epsilon.png"))


def _text_colour(image: AxesImage, value: float) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    if not math.isfinite(value):
        return "black"
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def cross_site_heatmap(run: RunData, out: Path) -> ReportFigure:
    """Models (rows) evaluated at each site (columns), from cross-site.json."""
    title = "Cross-site evaluation"
    found = cross_site_matrix(run)
    if found is None:
        return ReportFigure("cross-site", title, None, "No cross-site.json in the run directory.")
    values, labels, sites, metric = found
    fig = Figure(figsize=(max(5.0, 1.3 * len(sites) + 3), max(2.8, 0.6 * len(labels) + 1.8)))
    ax = fig.add_subplot(1, 1, 1)
    limits = {"vmin": 0, "vmax": 1} if metric in BOUNDED else {}
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", **limits)
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("evaluated at site")
    ax.set_title(f"{metric} of each model at each site")
    for (i, j), value in np.ndenumerate(values):
        text = format(value, ".3f") if math.isfinite(value) else "–"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=_text_colour(image, value))
    fig.colorbar(image, ax=ax, label=metric)
    return ReportFigure("cross-site", f"{title} ({metric})", _save(fig, out / "cross-site.png"))


def confusion(run: RunData, out: Path) -> ReportFigure:
    """The final round's confusion matrix pooled over sites (counts, with row percentages)."""
    title = "Confusion matrix, final round, pooled over sites"
    found = pooled_confusion(run)
    if found is None:
        why = "This task reports no confusion counts (segmentation reports voxel Dice instead)."
        return ReportFigure("confusion", title, None, why)
    matrix, names = found
    size = len(names)
    fig = Figure(figsize=(2.0 + 1.1 * size, 1.6 + 1.0 * size))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(size), names, rotation=30, ha="right")
    ax.set_yticks(range(size), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    for (i, j), count in np.ndenumerate(matrix):
        text = f"{count:.0f}\n{share[i, j]:.0%}"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=_text_colour(image, count))
    fig.colorbar(image, ax=ax, label="test examples")
    return ReportFigure("confusion", title, _save(fig, out / "confusion-matrix.png"))


def plot_audit_curve(
    points: Sequence[tuple[float | None, Mapping[str, float]]],
    path: Path,
    *,
    title: str = "Empirical ε lower bound vs claimed ε",
) -> Path:
    """Each adversary's ε lower bound against the claimed ε, with the line y = x: a point above it is a
    leak. `points` are (claimed ε, {adversary: lower bound}), one per audited run of a sweep (seeds at
    the same ε are drawn as points, joined through their mean); a run without DP (claimed ε None) has no
    place on the x axis and is drawn as a dotted horizontal line per adversary. Writes the PNG `path`."""
    if not points:
        raise ValueError("plot_audit_curve needs at least one (claimed ε, bounds) point")
    adversaries = list(dict.fromkeys(name for _, bounds in points for name in bounds))
    on_axis = [(float(c), b) for c, b in points if c is not None and math.isfinite(c)]
    dp_off = [b for c, b in points if c is None or not math.isfinite(c)]
    claimed = sorted({c for c, _ in on_axis})
    seen = [float(b) for _, bounds in points for b in bounds.values() if math.isfinite(b)]
    top = 1.1 * max([*claimed, *seen, 1.0])
    right = 1.1 * max(claimed) if claimed else top
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    diagonal = [0.0, max(right, top)]
    ax.fill_between(diagonal, diagonal, max(right, top), color=LEAK_COLOUR, alpha=0.07, linewidth=0,
                    label="bound above claim: leak")  # fmt: skip
    ax.plot(diagonal, diagonal, linestyle="--", color="black", linewidth=1, label="y = x (claimed ε)")
    markers = "osD^v<>px*"
    for index, (name, colour) in enumerate(zip(adversaries, _colours(len(adversaries)), strict=True)):
        placed = [(c, float(b[name])) for c, b in on_axis if name in b]
        if placed:
            marker = markers[index % len(markers)]
            ax.scatter(*zip(*placed, strict=True), color=colour, marker=marker, s=36, zorder=3, label=name)
            levels = sorted({x for x, _ in placed})
            if len(levels) > 1:
                means = [float(np.mean([y for x, y in placed if x == level])) for level in levels]
                ax.plot(levels, means, color=colour, linewidth=1.2)
        for bounds in dp_off:
            if name in bounds:
                ax.axhline(float(bounds[name]), color=colour, linestyle=":", label=f"{name}, DP off")
    ax.set_xlim(0, right)
    ax.set_ylim(0, top)
    ax.set_xlabel("claimed ε (DP accounting)")
    ax.set_ylabel("empirical ε lower bound (95 %)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per DP-off adversary line
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    return _save(fig, path)


def empirical_privacy(run: RunData, out: Path) -> ReportFigure:
    """The audited site's claimed ε beside each adversary's lower bound (summary.json's audit)."""
    title = "Empirical privacy: lower bound vs claimed ε"
    audit = run.empirical_privacy
    if audit is None:
        return ReportFigure("empirical-privacy", title, None, "No privacy audit ran (fedward sim audit).")
    bounds = {b.name: b.epsilon for b in audit.adversaries}
    path = out / "empirical-privacy.png"
    return ReportFigure("empirical-privacy", title, plot_audit_curve([(audit.claimed_epsilon, bounds)], path))


def make_figures(run: RunData, out: Path) -> list[ReportFigure]:
    """Every figure of the report, written under `out` (created); absent ones carry a note. The audit's
    figure is there only when the run was audited."""
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # a figure absent this time must not survive from an earlier report
        (out / name).unlink(missing_ok=True)
    makers = (metrics_per_round, site_metrics, epsilon_per_site, cross_site_heatmap, confusion)
    figures = [make(run, out) for make in makers]
    return figures + ([empirical_privacy(run, out)] if run.empirical_privacy else [])
