"""Result tables for the terminal: federated vs pooled vs local, and sweep summaries."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

ARMS = ("federated", "pooled", "local")


def cell(value: Any) -> str:
    """A metric for a table cell: 3 decimals, '–' when missing, '∞' for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.3f}"


def comparison_table(payload: dict[str, Any]) -> Table:
    """One row per site, then the mean over sites and the overall (pooled counts) row."""
    metric = payload["metric"]
    arms = [arm for arm in ARMS if arm in payload]
    table = Table(title=f"{payload['scenario']} · {metric}: {' vs '.join(arms)}")
    for col in ("site", "n test", *arms, *(f"ε {arm}" for arm in arms if arm != "pooled")):
        table.add_column(col, justify="left" if col == "site" else "right")
    sites = payload["federated"]["sites"]
    for site in sites:
        rows = [payload[arm]["sites"].get(site) or {} for arm in arms]
        table.add_row(
            site,
            f"{int(rows[0].get('num-examples') or 0)}",
            *(cell(r.get(metric)) for r in rows),
            *(cell(r.get("epsilon")) for arm, r in zip(arms, rows, strict=True) if arm != "pooled"),
        )
    for label, key in (("site mean", "mean-over-sites"), ("overall", "overall")):
        values = [payload[arm].get(key, {}).get(metric) for arm in arms]
        total = payload["federated"].get("overall", {}).get("num-examples") if key == "overall" else None
        table.add_row(
            f"[bold]{label}", f"{int(total)}" if total else "", *(cell(v) for v in values),
            *("" for arm in arms if arm != "pooled"),
        )  # fmt: skip
    return table


def comparison_notes(payload: dict[str, Any]) -> list[str]:
    """Lines under the table: compute budget, pooled ε, refusals and a stopped run."""
    notes = []
    budget = payload.get("budget", {})
    steps = budget.get("steps")
    if steps:
        local = ", ".join(f"{s} {n}" for s, n in steps["local"].items())
        notes.append(
            f"optimiser steps: federated {steps['federated']} (all sites, planned), "
            f"pooled {steps['pooled']}, "
            f"local {local} ({budget['rounds']} rounds × {budget['local-epochs']} epochs, batch "
            f"{budget['batch-size']})"
        )
    pooled = payload.get("pooled")
    if pooled and pooled.get("delta") is not None:
        notes.append(
            f"pooled DP reference: ε = {cell(pooled['epsilon'])} at δ = {pooled['delta']:.2g} on "
            f"{pooled['num-train']} rows"
        )
    for arm in ("federated", "local"):
        for site, metrics in (payload.get(arm) or {}).get("sites", {}).items():
            if metrics.get("refused"):
                notes.append(f"{arm}: {site} did not train from {metrics['refused']}")
    if payload["federated"].get("stopped"):
        notes.append(f"federated run stopped: {payload['federated']['stopped']}")
    return notes


def print_comparison(console: Console, payload: dict[str, Any]) -> None:
    """Print the comparison table and its notes."""
    console.print(comparison_table(payload))
    for line in comparison_notes(payload):
        console.print(f"  {line}")


def sweep_table(result: dict[str, Any]) -> Table:
    """Mean ± sd over seeds of each arm, one row per swept value."""
    arms = [arm for arm in ARMS if any(result["summary"][v][arm]["n"] for v in result["values"])]
    table = Table(
        title=f"{result['scenario']} · {result['metric']} over {result['key']} ({result['seeds']} seeds)"
    )
    for col in (result["key"], *arms, "runs"):
        table.add_column(col, justify="right")
    for value in result["values"]:
        row = result["summary"][value]
        done = max(row[arm]["n"] for arm in arms) if arms else 0
        table.add_row(
            value,
            *(f"{cell(row[arm]['mean'])} ± {cell(row[arm]['sd'])}" if row[arm]["n"] else "–" for arm in arms),
            f"{done}/{result['seeds']}",
        )
    return table
