"""The model card of a run (`MODEL_CARD.md`): intended use, data, metrics per site, privacy, limitations.

Written from the run directory only (config.json, summary.json, the weights), so `fedward sign` can
make it again after a run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedward.common.errors import ConfigError
from fedward.common.tasks import TASKS, CardText, task_spec
from fedward.server.provenance.manifest import CARD_FILE, WEIGHT_FILES, sha256_file
from fedward.server.report.empirical_privacy import (
    EmpiricalPrivacy,
    claimed_text,
    explanation,
    guesses_text,
    leak_text,
    membership_text,
    percent,
    read_empirical_privacy,
)
from fedward.server.rundir import CONFIG_FILE, SUMMARY_FILE, RunDirectory


def metric_columns() -> tuple[str, ...]:
    """Every registered task's table columns, in registration order, then the loss."""
    columns = dict.fromkeys(c for name in TASKS for c in task_spec(name).columns)
    return (*columns, "loss")


def _card(task: object) -> CardText | None:
    """The task's card text (None for a task this installation does not know)."""
    try:
        return task_spec(str(task)).card
    except ConfigError:
        return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _num(value: Any, fmt: str = ".3f") -> str:
    """A metric or ε: `fmt` for finite numbers, ∞, or a dash when absent."""
    number = _finite(value)
    if number is None or math.isnan(number):
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    return format(number, fmt)


def _count(value: Any) -> str:
    """A count (floats from metric records included) as a whole number."""
    number = _finite(value)
    return "—" if number is None or not math.isfinite(number) else f"{number:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _cells(evaluate: dict[str, Any], keys: list[str]) -> list[float] | None:
    """The counts under `keys`; None when the site withheld any (NaN or null, common/disclosure.py)."""
    values = [v for k in keys if (v := _finite(evaluate.get(k))) is not None and not math.isnan(v)]
    return values if len(values) == len(keys) else None


def class_counts(evaluate: dict[str, Any] | None) -> list[float] | None:
    """Test cases per true class from a site's confusion counts (binary: [negative, positive])."""
    if not evaluate:
        return None
    if all(k in evaluate for k in ("tp", "fn", "tn", "fp")):
        binary = _cells(evaluate, ["tn", "fp", "fn", "tp"])
        return None if binary is None else [binary[0] + binary[1], binary[2] + binary[3]]
    cells = [tuple(map(int, k[3:].split("-"))) for k in evaluate if k.startswith("cm-")]
    if not cells or _cells(evaluate, [f"cm-{i}-{j}" for i, j in cells]) is None:
        return None
    size = max(max(c) for c in cells) + 1
    return [sum(float(evaluate.get(f"cm-{i}-{j}", 0)) for j in range(size)) for i in range(size)]


def _weights_line(run: Path) -> str:
    for name in WEIGHT_FILES:
        if (run / name).is_file():
            return f"`{name}` (sha256 `{sha256_file(run / name)}`)"
    raise ConfigError(f"{run}: no model weights ({' or '.join(WEIGHT_FILES)})")


def _overview(run: Path, rc: dict, summary: dict, sites: dict) -> list[str]:
    card = _card(summary.get("task"))
    what = card.what(rc) if card else f"task {summary.get('task')!r}"
    rows = [
        ["predicts", what],
        ["task / model", f"`{summary.get('task')}` / `{rc.get('model')}` (run config `model`)"],
        [
            "training",
            f"federated, `{summary.get('strategy')}`, {summary.get('rounds-completed')} of "
            f"{summary.get('rounds')} rounds, {len(sites)} sites",
        ],
        ["weights", _weights_line(run)],
        ["provenance", "`provenance.json`, signed in `provenance.sig`: check with `fedward verify`"],
    ]
    return [f"# Model card: {run.name}", "", *_table(["", ""], rows), ""]


def _intended_use(summary: dict) -> list[str]:
    card = _card(summary.get("task"))
    use = card.use if card else "research"
    return [
        "## Intended use",
        "",
        f"- Research, and decision support under clinical supervision: {use}.",
        "- **Not a diagnosis.** The model is not a medical device, has not been validated prospectively or "
        "cleared by any regulator, and its output must not be the sole basis of a diagnosis or treatment.",
        "- Use it only on data like the training data (same task, inputs and population), and measure its "
        "performance on local data before any use at a new site.",
        "",
    ]


def _data(rc: dict, config: dict, sites: dict) -> list[str]:
    reports = config.get("sites") or {}
    rows = []
    for site in sorted(sites):
        report = dict(reports.get(site) or (sites[site] or {}).get("data") or {})
        fingerprint = report.pop("fingerprint", None)
        train, test = report.pop("num-train", None), report.pop("num-test", None)
        other = ", ".join(f"{k} {_count(v)}" for k, v in sorted(report.items()))
        shown = f"`{fingerprint[:16]}…`" if isinstance(fingerprint, str) else "—"
        rows.append([site, _count(train), _count(test), other or "—", shown])
    card = _card(rc.get("task"))
    if rc.get("data-root") and card and card.simulated_source:
        source = card.simulated_source
    else:
        source = "each site's own data (its node configuration's `data-dir`)"
    lines = ["## Data", "", f"Source: {source}. Samples per site (counts reported by the sites):", ""]
    lines += _table(["site", "training samples", "test samples", "data report", "data-set fingerprint"], rows)
    lines += [
        "",
        "Patient data never left the sites: the coordinator received counts, aggregate feature statistics, "
        "model updates and metrics. The fingerprint is a keyed hash (HMAC) of the site's patients under a "
        "secret that never leaves the site: it shows whether two runs used the same data, and cannot be "
        "recomputed by anyone else.",
        "",
    ]
    if config.get("preprocessing"):
        lines += ["Inputs are encoded with the pooled statistics in `config.json` → `preprocessing`.", ""]
    return lines


def _metrics(summary: dict, sites: dict) -> list[str]:
    entries = {site: (sites[site] or {}).get("evaluate") or {} for site in sorted(sites)}
    overall = summary.get("overall") or {}
    columns = [c for c in metric_columns() if c in overall or any(c in e for e in entries.values())]
    rows = [
        [site, _count(e.get("num-examples"))] + [_num(e.get(c)) for c in columns]
        for site, e in entries.items()
    ]
    rows.append(
        ["**overall**", _count(overall.get("num-examples"))] + [_num(overall.get(c)) for c in columns]
    )
    return [
        "## Metrics",
        "",
        f"The final global model after round {summary.get('rounds-completed')}, evaluated by each site on "
        "its held-out test split; overall accuracy, sensitivity, specificity and F1 pool the sites' "
        "confusion counts, ROC AUC and loss are example-weighted means." + _suppressed_note(overall),
        "",
        *_table(["site", "test cases", *columns], rows),
        "",
    ]


def _suppressed_note(overall: dict) -> str:
    """Says how many sites the pooled threshold metrics leave out (small cells, common/disclosure.py)."""
    left_out = _finite(overall.get("sites-suppressed"))
    if not left_out:
        return ""
    return (
        f" {left_out:.0f} site(s) withheld small cells (minimum cell count), so the pooled threshold "
        "metrics leave them out; a dash is a value a site withheld or that is undefined."
    )


def threat_model(rc: dict) -> str:
    """Whom the run's ε holds against, with secure aggregation on (docs/privacy.md)."""
    if rc.get("distributed-dp"):
        return (
            "Secure aggregation with **distributed DP**: the coordinator saw only the sum of the sites' "
            "noisy gradient sums, and each site added a share of the noise. ε holds against a coordinator "
            "that does not collude with sites (at least the secure-aggregation threshold of sites' noise in "
            "every sum); against a coordinator that also knows the other sites' noise, a site's own share "
            "alone protects it (a larger ε). Each round is one full-batch gradient step, booked by its "
            "concentrated-DP bound (Kairouz, Liu & Steinke 2021)."
        )
    return (
        "Secure aggregation: the coordinator saw only the sum of the sites' masked updates, never one "
        "site's update; each site's ε (local DP) holds against the coordinator in any case."
    )


def _privacy(rc: dict, summary: dict, sites: dict) -> list[str]:
    lines = ["## Privacy spent", ""]
    if summary.get("dp", rc.get("dp")):
        lines.append(
            "Local differential privacy at every site: DP-SGD (Opacus), per-sample clipping norm "
            f"{_num(rc.get('dp-max-grad-norm'), 'g')}, target ε {_num(rc.get('dp-target-epsilon'), 'g')} "
            f"per site for the run, accountant `{rc.get('dp-accountant')}`. ε is composed over every step "
            "the site took and every release it made: the federated statistics (a Gaussian release drawn "
            "once per data set, its ε shown on its own below) and, with cross-site evaluation, the "
            'local-only model. "ε lifetime" covers every run on the site\'s data set.'
        )
    else:
        lines.append(
            "**No differential privacy** (`dp = false`): the weights carry no formal privacy guarantee and "
            "may reveal information about individual training records."
        )
    if rc.get("secure-aggregation"):
        lines += ["", threat_model(rc)]
    if summary.get("dp-seeded-noise"):
        lines += [
            "",
            "**WARNING: research switch `dp-seeded-noise` was on.** The DP noise was drawn from the run's "
            "seed, so anyone who knows the run configuration can subtract it: this model has **no** "
            "privacy guarantee, whatever ε says.",
        ]
    rows = [
        [
            site,
            _num((e or {}).get("epsilon")),
            _num((e or {}).get("statistics-epsilon")),
            _num((e or {}).get("delta"), ".3g"),
            _num((e or {}).get("epsilon-lifetime")),
            _num((e or {}).get("epsilon-cap")),
            _count((e or {}).get("privacy-steps")),
        ]
        for site, e in sorted(sites.items())
    ]
    lines += [
        "",
        *_table(["site", "ε (this run)", "ε statistics", "δ", "ε lifetime", "ε cap", "private steps"], rows),
        "",
    ]
    central = summary.get("central-dp")
    if central:
        lines += [
            f"Central (site-level) DP on the aggregate: ε {_num(central.get('epsilon'))}, δ "
            f"{_num(central.get('delta'), '.3g')} over {_count(central.get('releases'))} releases "
            f"(noise multiplier {_num(rc.get('central-dp-noise-multiplier'), 'g')}, clipping norm "
            f"{_num(rc.get('central-dp-clipping-norm'), 'g')}).",
            "",
        ]
    return lines


def _empirical_privacy(audit: EmpiricalPrivacy | None) -> list[str]:
    """The privacy audit (`fedward sim audit`): ε lower bounds beside the claimed ε, membership inference."""
    if audit is None:
        return []
    claimed = claimed_text(audit)
    rows = [[b.label, _num(b.epsilon, ".2f"), claimed, guesses_text(b)] for b in audit.adversaries]
    rows.append(["**strongest adversary**", f"**{_num(audit.epsilon_lower_bound, '.2f')}**", claimed, ""])
    header = ["adversary", f"ε lower bound ({percent(audit.confidence)})", "claimed ε", "correct / guesses"]
    lines = [
        "## Empirical privacy (audit)",
        "",
        f"Audited site {audit.site}: {audit.method}"
        + (f", {audit.canaries} canaries." if audit.canaries is not None else "."),
        "",
        *_table(header, rows),
        "",
    ]
    leak = leak_text(audit)
    if leak:
        lines += [f"**{leak}**", ""]
    if audit.membership is not None:
        lines += [membership_text(audit.membership), ""]
    return [*lines, " ".join(explanation(audit)), ""]


def _skew(sites: dict) -> str | None:
    shares = {}
    for site, entry in sorted(sites.items()):
        counts = class_counts((entry or {}).get("evaluate"))
        if counts and sum(counts) > 0:
            shares[site] = [c / sum(counts) for c in counts]
    if len(shares) < 2:
        return None
    classes = min(len(s) for s in shares.values())
    spread = max(
        max(s[i] for s in shares.values()) - min(s[i] for s in shares.values()) for i in range(classes)
    )
    shown = ", ".join(f"{site} " + "/".join(f"{100 * v:.0f}%" for v in s) for site, s in shares.items())
    verdict = (
        "the label mix differs across sites" if spread > 0.15 else "the label mix is similar across sites"
    )
    return f"**Label skew**: share of test cases per class (class 0/1/...): {shown}; {verdict}."


def _limitations(rc: dict, summary: dict, sites: dict) -> list[str]:
    items = []
    card = _card(rc.get("task"))
    if rc.get("data-root") and card and card.synthetic:
        items.append(
            "**Synthetic data**: trained and tested on phantoms; its metrics say nothing about real MRI."
        )
    train = {s: ((e or {}).get("data") or {}).get("num-train") for s, e in sites.items()}
    known = {s: float(n) for s, n in train.items() if isinstance(n, int | float)}
    tests = [float(((e or {}).get("evaluate") or {}).get("num-examples") or 0) for e in sites.values()]
    if known:
        smallest = min(known, key=known.__getitem__)
        n_test = min((t for t in tests if t > 0), default=0)
        width = f"±{1 / math.sqrt(n_test):.2f}" if n_test else "wide"
        items.append(
            f"**Small samples**: {_count(sum(known.values()))} training samples in all, "
            f"{_count(known[smallest])} at {smallest}; a site metric over n test cases is uncertain by up to "
            f"about ±1/√n (95%), here {width}."
        )
    skew = _skew(sites)
    if skew:
        items.append(skew)
    items.append("**No external validation**: every metric comes from the sites' own held-out splits.")
    if summary.get("stopped"):
        items.append(f"**Run stopped early**: {summary['stopped']}.")
    refused = sorted(s for s, e in sites.items() if (e or {}).get("refused"))
    if refused:
        items.append(f"**Sites refused rounds** under their privacy policy: {', '.join(refused)}.")
    rejected = sorted(s for s, e in sites.items() if (e or {}).get("updates-rejected"))
    if rejected:
        items.append(f"**Updates rejected** by the server's validation from: {', '.join(rejected)}.")
    if summary.get("dp", rc.get("dp")):
        items.append("Differential privacy adds noise to training and usually costs accuracy.")
    return ["## Limitations", "", *(f"- {item}" for item in items), ""]


def _how_to_load() -> list[str]:
    return [
        "## Loading the weights",
        "",
        "Check the files first: `fedward verify RUN_DIR --public-key provenance-ed25519.pub`. Then, with the "
        "same fedward version:",
        "",
        "```python",
        "import json",
        "from safetensors.torch import load_file",
        "from fedward.common.config import RunConfig",
        "from fedward.common.tasks import get_task",
        "",
        'config = RunConfig.from_flower(json.load(open("config.json"))["run-config"])',
        "model = get_task(config.task).build_model(config)",
        'model.load_state_dict(load_file("model.safetensors"))',
        "model.eval()",
        "```",
        "",
        "`model.pt` holds the same weights as a torch state dict (`torch.load(path, weights_only=True)`).",
        "",
    ]


def model_card(run_dir: Path) -> str:
    """The Markdown model card of a run directory."""
    run = RunDirectory.existing(run_dir)
    config, summary = run.read_json(CONFIG_FILE), run.read_json(SUMMARY_FILE)
    rc = config.get("run-config") or {}
    sites = summary.get("sites") or {}
    parts = [
        _overview(run.path, rc, summary, sites),
        _intended_use(summary),
        _data(rc, config, sites),
        _metrics(summary, sites),
        _privacy(rc, summary, sites),
        _empirical_privacy(read_empirical_privacy(summary, run.path / SUMMARY_FILE)),
        _limitations(rc, summary, sites),
        _how_to_load(),
    ]
    return "\n".join(line for part in parts for line in part)


def write_model_card(run_dir: Path) -> Path:
    """Write `<run>/MODEL_CARD.md`; returns its path."""
    run = Path(run_dir).expanduser().resolve()
    target = run / CARD_FILE
    tmp = run / f".{CARD_FILE}.tmp"
    tmp.write_text(model_card(run), encoding="utf-8")
    tmp.replace(target)
    return target
