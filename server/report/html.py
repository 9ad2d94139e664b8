"""The self-contained report.html: inline CSS, figures as base64 data URIs, every text escaped."""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

from fedward.server.report.data import RunData, confidence_interval, failures, metric_keys, number
from fedward.server.report.empirical_privacy import (
    claimed_text,
    explanation,
    guesses_text,
    leak_text,
    membership_text,
    percent,
)
from fedward.server.report.plots import ReportFigure

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 24px; color: #1d2327; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { font-size: 1.2em; margin: 28px 0 8px;
     border-bottom: 1px solid #dcdfe3; padding-bottom: 4px; }
.meta { color: #50575e; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dcdfe3; padding: 4px 10px; text-align: right; }
th { background: #f3f5f6; } td:first-child, th:first-child { text-align: left; }
tr.overall td { font-weight: 600; background: #f8f9fa; }
.ci { color: #6c7781; font-size: 0.85em; white-space: nowrap; }
.note { color: #6c7781; font-style: italic; }
.status-ok { color: #1a7f37; } .status-stop { color: #b32d2e; font-weight: 600; }
.leak { color: #b32d2e; font-weight: 600; border-left: 4px solid #b32d2e; padding-left: 8px; }
figure { margin: 8px 0 18px; } figure img { max-width: 100%; height: auto; border: 1px solid #eceef0; }
figcaption { color: #50575e; font-size: 0.9em; }
details pre { background: #f6f7f7; padding: 10px; overflow-x: auto; }
"""

# Counts the figures the browser decoded; a test reads them back from the dumped DOM.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesLoaded = String(decoded.length);
});
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: '–' when missing or NaN; `digits` decimals (0 for counts)."""
    if isinstance(value, str):
        return value
    x = number(value)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}"


def fmt_count(value: Any) -> str:
    """A count without decimals when it is whole, else three decimals."""
    x = number(value)
    return fmt(value, 0 if math.isfinite(x) and x == int(x) else 3)


def _table(header: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """Rows are (css class, cells); cells are already escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for css, cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metric_cell(metrics: dict[str, Any], key: str) -> str:
    ci = confidence_interval(metrics, key)
    text = escape(fmt(metrics.get(key)))
    return text + (f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci else "")


def summary_section(run: RunData) -> str:
    """Final overall and per-site metrics, with confidence intervals where the run has them."""
    bounded, others = metric_keys(run)
    keys = bounded + others
    evaluations, overall = run.final_evaluations(), run.final_overall()
    if not keys or not (evaluations or overall):
        return '<h2>Final metrics</h2><p class="note">No evaluation metrics were recorded.</p>'
    rows = [
        ("", [escape(site), escape(fmt_count(ev.get("num-examples")))] + [_metric_cell(ev, k) for k in keys])
        for site, ev in sorted(evaluations.items())
    ]
    rows.append(
        (
            "overall",
            ["overall", escape(fmt_count(overall.get("num-examples")))]
            + [_metric_cell(overall, k) for k in keys],
        )
    )
    note = ""
    if any(confidence_interval(m, k) for m in [overall, *evaluations.values()] for k in keys):
        note = '<p class="note">Brackets: confidence interval [low, high].</p>'
    return "<h2>Final metrics</h2>" + _table(["site", "n test", *keys], rows) + note


def _privacy_rows(run: RunData) -> dict[str, dict[str, Any]]:
    """Per-site privacy facts: summary.json's, else the last round's ε and budget."""
    if run.summary and run.summary.get("sites"):
        return {s: dict(v or {}) for s, v in run.summary["sites"].items()}
    last = run.rounds[-1] if run.rounds else {}
    out: dict[str, dict[str, Any]] = {}
    for site in run.sites:
        train = ((last.get("sites") or {}).get(site) or {}).get("train") or {}
        out[site] = {
            "epsilon": (last.get("epsilon") or {}).get(site),
            **((last.get("budget") or {}).get(site) or {}),
            "delta": train.get("delta"),
            "privacy-steps": train.get("privacy-steps"),
        }
    return out


def _delta(value: Any) -> str:
    x = number(value)
    return "–" if math.isnan(x) else f"{x:.2e}"


def privacy_section(run: RunData) -> str:
    """ε and δ per site, the site's lifetime cap and what is left, refusals; central DP when used."""
    head = "<h2>Privacy</h2>"
    if run.config.get("dp") is False or (run.summary or {}).get("dp") is False:
        head += '<p class="note">Local DP was off for this run: no ε bound holds for any site.</p>'
    rows = [
        (
            "",
            [escape(site)]
            + [escape(fmt(info.get("epsilon"))), escape(_delta(info.get("delta")))]
            + [escape(fmt_count(info.get("privacy-steps")))]
            + [escape(fmt(info.get(k))) for k in ("epsilon-lifetime", "epsilon-cap", "epsilon-left")]
            + [escape(str(info.get("refused") or "–")), escape(fmt_count(info.get("updates-rejected", 0)))],
        )
        for site, info in sorted(_privacy_rows(run).items())
    ]
    header = ["site", "ε (this run)", "δ", "DP steps", "ε lifetime", "ε cap", "ε left", "refused", "rejected"]
    table = _table(header, rows) if rows else '<p class="note">No site recorded privacy figures.</p>'
    central = (run.summary or {}).get("central-dp")
    if central:
        table += (
            f"<p>Central (site-level) DP of the released model: ε = {escape(fmt(central.get('epsilon')))}, "
            f"δ = {escape(_delta(central.get('delta')))} "
            f"over {escape(fmt_count(central.get('releases')))} releases.</p>"
        )
    return head + table + '<p class="note">A cap of “–” means the site set no lifetime cap.</p>'


def status_section(run: RunData) -> str:
    """How the run ended, and every failure or rejected update by round."""
    planned = (run.summary or {}).get("rounds") or run.config.get("num-server-rounds")
    done = run.rounds[-1]["round"] if run.rounds else 0
    if run.summary is None:
        why = f"No summary.json: the run is unfinished or crashed after round {done}."
        status = f'<p class="status-stop">{escape(why)}</p>'
    elif run.summary.get("stopped"):
        status = f'<p class="status-stop">Stopped: {escape(str(run.summary["stopped"]))}</p>'
    else:
        done_text = f"Completed {fmt_count(done)} of {fmt_count(planned)} rounds."
        status = f'<p class="status-ok">{escape(done_text)}</p>'
    events = failures(run)
    if events:
        items = "".join(f"<li>round {r}: {escape(text)}</li>" for r, text in events)
        status += f"<p>Failures and rejected updates:</p><ul>{items}</ul>"
    else:
        status += "<p>No site failed and no update was rejected.</p>"
    return "<h2>Run status</h2>" + status


def _embedded(figure: ReportFigure) -> str:
    """The figure as an embedded PNG, or a note saying why it is absent."""
    if figure.path is None:
        return f'<p class="note">{escape(figure.note)}</p>'
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    alt, name = escape(figure.title), escape(figure.name)
    img = f'<img src="data:image/png;base64,{data}" alt="{alt}" id="fig-{name}">'
    return f"<figure>{img}<figcaption>{escape(figure.path.name)}</figcaption></figure>"


def figure_section(figure: ReportFigure) -> str:
    """The figure under its own heading."""
    return f"<h2>{escape(figure.title)}</h2>" + _embedded(figure)


def empirical_privacy_section(run: RunData, figure: ReportFigure | None) -> str:
    """The privacy audit (summary.json's "empirical-privacy"): each adversary's ε lower bound beside the
    claimed ε, membership inference on the final model, a leak warning, what it means, and its plot."""
    audit = run.empirical_privacy
    if audit is None:
        return ""
    claimed = claimed_text(audit)
    lead = f"Audited site {audit.site}: {audit.method}"
    if audit.canaries is not None and audit.canaries_included is not None:
        lead += f"; {audit.canaries} canaries, {audit.canaries_included} of them included"
    delta = "" if audit.claimed_delta is None else f", δ = {_delta(audit.claimed_delta)}"
    lead += f". Claimed guarantee: ε = {claimed}{delta}."
    rows = [
        ("", [escape(b.label), escape(fmt(b.epsilon, 2)), escape(claimed), escape(guesses_text(b))])
        for b in audit.adversaries
    ]
    rows.append(
        ("overall", ["strongest adversary", escape(fmt(audit.epsilon_lower_bound, 2)), escape(claimed), ""])
    )
    header = ["adversary", f"ε lower bound ({percent(audit.confidence)})", "claimed ε", "correct / guesses"]
    parts = [
        "<h2>Empirical privacy</h2>",
        f"<p>{escape(lead)}</p>",
        _table(header, rows),
    ]
    leak = leak_text(audit)
    if leak:
        parts.append(f'<p class="leak">{escape(leak)}</p>')
    if audit.membership is not None:
        parts.append(f"<p>{escape(membership_text(audit.membership))}</p>")
    parts.append(f"<p>{escape(' '.join(explanation(audit)))}</p>")
    if figure is not None:
        parts.append(_embedded(figure))
    return "".join(parts)


def data_section(run: RunData) -> str:
    """Each site's data report (counts only), from config.json."""
    if not run.site_reports:
        return ""
    keys = sorted({k for report in run.site_reports.values() for k in (report or {})})
    rows = [
        ("", [escape(site)] + [escape(fmt_count((report or {}).get(k))) for k in keys])
        for site, report in sorted(run.site_reports.items())
    ]
    return "<h2>Site data</h2>" + _table(["site", *keys], rows)


def config_section(run: RunData) -> str:
    """The run configuration, folded."""
    lines = "\n".join(f"{k} = {v!r}" for k, v in sorted(run.config.items()))
    return f"<details><summary>Run configuration</summary><pre>{escape(lines)}</pre></details>"


def render(run: RunData, figures: list[ReportFigure], generated: str) -> str:
    """The whole report page."""
    summary = run.summary or {}
    done = run.rounds[-1]["round"] if run.rounds else 0
    dp = "local DP off" if run.config.get("dp") is False else "local DP"
    if run.config.get("dp") and number(run.config.get("dp-target-epsilon")) > 0:
        dp += f" (target ε {number(run.config['dp-target-epsilon']):g})"
    parts = [
        f"task {run.task}",
        f"strategy {run.strategy}",
        f"{fmt_count(done)} rounds",
        dp,
        f"{len(run.sites)} sites",
    ]
    if "wall-seconds" in summary:
        parts.append(f"wall time {fmt(summary['wall-seconds'], 1)} s")
    meta = " · ".join(escape(p) for p in parts)
    audit_figure = next((f for f in figures if f.name == "empirical-privacy"), None)
    body = [
        f"<h1>fedward report: {escape(run.name)}</h1>",
        f'<p class="meta">{meta}<br>generated {escape(generated)} from {escape(str(run.path))}</p>',
        status_section(run),
        summary_section(run),
        privacy_section(run),
        empirical_privacy_section(run, audit_figure),
        *(figure_section(f) for f in figures if f is not audit_figure),
        data_section(run),
        config_section(run),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fedward report: {escape(run.name)} ({escape(run.task)}, {escape(run.strategy)})</title>"
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
