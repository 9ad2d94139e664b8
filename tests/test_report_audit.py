"""The "Empirical privacy" section of report.html and the model card, from summary.json's audit, and the
sweep's lower-bound-vs-claimed-ε plot."""

from __future__ import annotations

import copy
import io
import json
import re
from html import escape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_report import IMG, write_run  # a run folder as server/app.py writes it

from fedward.common.errors import ConfigError
from fedward.server.report.build import make_report
from fedward.server.report.data import load_run
from fedward.server.report.model_card import model_card
from fedward.server.report.plots import plot_audit_curve

AUDIT = {
    "method": "one-run canary audit (Steinke, Nasr & Jagielski 2023), Dirac gradient canaries",
    "site": "site-0",
    "claimed": {"epsilon": 3.0, "delta": 0.00093, "dp": True, "dp-seeded-noise": True},
    "canaries": 800,
    "canaries-included": 397,
    "confidence": 0.95,
    "adversaries": {
        "coordinator": {"epsilon-lower-bound": 0.40, "guesses": 480, "correct": 317},
        "final-model": {"epsilon-lower-bound": 0.19, "guesses": 320, "correct": 201},
        "coordinator-knowing-seed": {"epsilon-lower-bound": 3.54, "guesses": 640, "correct": 640},
    },
    "epsilon-lower-bound": 3.54,
    "leak": True,
    "membership-inference": {
        "auc": 0.52,
        "tpr-at-fpr": {"0.001": None, "0.01": 0.02},
        "members": 319,
        "non-members": 81,
        "attack": "loss",
    },
}
COORDINATOR = "coordinator (sees the site's update every round)"
SECTION = re.compile(r"<h2>Empirical privacy</h2>(.*?)(?=<h2>)", re.S)


def audited_run(root: Path, audit: dict | None = AUDIT, *, seeded: bool | None = None) -> Path:
    """A finished run (tests/test_report.py's) with `audit` under summary.json's "empirical-privacy"
    and model weights (for the model card)."""
    run = write_run(root, cross_site=False)
    summary = json.loads((run / "summary.json").read_text())
    if audit is not None:
        summary["empirical-privacy"] = audit
    if seeded is not None:
        summary["dp-seeded-noise"] = seeded
    (run / "summary.json").write_text(json.dumps(summary))
    torch.save({"w": torch.zeros(2)}, run / "model.pt")
    return run


def _leak_free(claimed: float | None) -> dict:
    """A DP (or, with `claimed` None, non-DP) audit without the seeded switch and without a leak."""
    audit = copy.deepcopy(AUDIT)
    audit["claimed"].update({"epsilon": claimed, "dp": claimed is not None, "dp-seeded-noise": False})
    del audit["adversaries"]["coordinator-knowing-seed"]
    audit.update({"epsilon-lower-bound": 0.40, "leak": False})
    audit["membership-inference"]["attack"] = "lira-offline"
    return audit


def _assert_png(path: Path) -> None:
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.var() > 0 and (pixels < 128).mean() > 0.005, "almost nothing drawn"


@pytest.fixture(scope="module")
def leaking(tmp_path_factory: pytest.TempPathFactory):
    """The report of a run whose knowing-seed adversary beat the claimed ε."""
    return make_report(audited_run(tmp_path_factory.mktemp("runs")), tensorboard=False, mlflow=False)


def test_report_has_an_empirical_privacy_section_with_every_adversary(leaking):
    html = leaking.html.read_text()
    assert html.count("<h2>Empirical privacy</h2>") == 1
    section = SECTION.search(html)[1]
    header = "<th>adversary</th><th>ε lower bound (95 %)</th><th>claimed ε</th><th>correct / guesses</th>"
    assert header in section
    assert f"<td>{escape(COORDINATOR)}</td><td>0.40</td><td>3.00</td><td>317 / 480 (66 %)</td>" in section
    assert (
        "<td>recipient of the final model</td><td>0.19</td><td>3.00</td><td>201 / 320 (63 %)</td>" in section
    )
    assert (
        "knows the run seed (seeded-noise switch)</td><td>3.54</td><td>3.00</td><td>640 / 640 (100 %)"
        in section
    )
    assert '<tr class="overall"><td>strongest adversary</td><td>3.54</td>' in section
    assert "800 canaries, 397 of them included" in section and "δ = 9.30e-04" in section


def test_report_flags_the_leak_in_red_and_explains_the_bound(leaking):
    section = SECTION.search(leaking.html.read_text())[1]
    leak = re.search(r'<p class="leak">([^<]*)</p>', section)
    assert leak and "lower bound ε ≥ 3.54 exceeds the claimed ε 3.00 at site-0" in leak[1]
    assert ".leak { color: #b32d2e;" in leaking.html.read_text()  # the report's red
    assert "not proof of how little" in section  # a lower bound is evidence, not proof
    assert "The guarantee is the claimed ε = 3.00" in section
    assert "the canary audit is conservative" in section
    assert "a bound above it means the implementation or configuration leaks" in section
    assert "dp-seeded-noise was on" in section


def test_adversaries_keep_a_fixed_order_whatever_the_json_order(tmp_path):
    audit = copy.deepcopy(AUDIT)
    audit["adversaries"] = dict(sorted(audit["adversaries"].items(), reverse=True))  # json sort_keys etc.
    audit["adversaries"]["other"] = {"epsilon-lower-bound": 0.0, "guesses": 2, "correct": 1}
    found = load_run(audited_run(tmp_path, audit)).empirical_privacy
    assert [b.name for b in found.adversaries] == [
        "coordinator",
        "final-model",
        "coordinator-knowing-seed",
        "other",
    ]


def test_report_shows_membership_inference_with_unmeasurable_tpr_as_na(leaking):
    section = SECTION.search(leaking.html.read_text())[1]
    assert "loss attack, 319 training records as members against 81 held-out records" in section
    assert "AUC 0.520 (0.5 is guessing)" in section
    assert "TPR at 0.1 % FPR n/a (needs ≥ 1000 non-members)" in section
    assert "TPR at 1 % FPR 0.020" in section


def test_the_audit_plot_sits_in_its_section_as_a_real_png(leaking):
    png = leaking.run.path / "report" / "empirical-privacy.png"
    assert png in leaking.images and len(leaking.images) == 5  # 4 as without cross-site.json, plus this
    _assert_png(png)
    section = SECTION.search(leaking.html.read_text())[1]
    assert 'id="fig-empirical-privacy"' in section and len(IMG.findall(section)) == 1
    assert len(IMG.findall(leaking.html.read_text())) == 5
    assert leaking.html.read_text().count("<h2>Empirical privacy") == 1  # not a second, figure heading


def test_a_run_without_an_audit_has_no_such_section_and_no_stale_plot(tmp_path):
    run = audited_run(tmp_path, None)
    (run / "report").mkdir()
    (run / "report" / "empirical-privacy.png").write_bytes(b"stale")  # from an earlier, audited report
    report = make_report(run, tensorboard=False, mlflow=False)
    html = report.html.read_text()
    assert "Empirical privacy" not in html and "lower bound" not in html
    assert load_run(run).empirical_privacy is None
    assert not (run / "report" / "empirical-privacy.png").exists()
    assert [f.name for f in report.figures if f.name == "empirical-privacy"] == []
    assert "Empirical privacy" not in model_card(run)


def test_a_bound_below_the_claim_is_no_leak(tmp_path):
    report = make_report(audited_run(tmp_path, _leak_free(8.0)), tensorboard=False, mlflow=False)
    section = SECTION.search(report.html.read_text())[1]
    assert 'class="leak"' not in section and "Leak" not in section
    assert "knows the run seed" not in section and "dp-seeded-noise" not in section
    assert "<td>strongest adversary</td><td>0.40</td><td>8.00</td>" in section
    assert "LiRA (offline) attack" in section


def test_a_run_without_dp_claims_nothing_and_still_plots_its_bounds(tmp_path):
    report = make_report(audited_run(tmp_path, _leak_free(None)), tensorboard=False, mlflow=False)
    section = SECTION.search(report.html.read_text())[1]
    assert "<td>0.40</td><td>none (DP off)</td>" in section
    assert "This run used no differential privacy, so no ε is claimed" in section
    _assert_png(report.run.path / "report" / "empirical-privacy.png")


def test_model_card_has_the_audit_section(tmp_path):
    card = model_card(audited_run(tmp_path, seeded=True))
    assert card.count("## Empirical privacy (audit)") == 1
    section = card.split("## Empirical privacy (audit)")[1].split("\n## ")[0]
    assert card.index("## Privacy spent") < card.index("## Empirical privacy (audit)")
    assert "| adversary | ε lower bound (95 %) | claimed ε | correct / guesses |" in section
    assert f"| {COORDINATOR} | 0.40 | 3.00 | 317 / 480 (66 %) |" in section
    assert "| **strongest adversary** | **3.54** | 3.00 |  |" in section
    assert "**Leak: the measured lower bound ε ≥ 3.54 exceeds the claimed ε 3.00 at site-0." in section
    assert "TPR at 0.1 % FPR n/a (needs ≥ 1000 non-members)" in section and "AUC 0.520" in section
    assert "not proof of how little" in section and "conservative" in section
    assert "WARNING: research switch `dp-seeded-noise` was on" in card


def test_model_card_of_a_dp_run_does_not_say_it_has_no_dp(tmp_path):
    """The seeded-noise warning's branch once swallowed the DP/no-DP choice: a DP run said "No DP"."""
    card = model_card(audited_run(tmp_path, _leak_free(3.0)))
    assert "Local differential privacy at every site" in card
    assert "No differential privacy" not in card and "WARNING" not in card
    assert "Leak" not in card


def test_a_malformed_audit_names_the_file_and_the_field(tmp_path):
    audit = copy.deepcopy(AUDIT)
    audit["adversaries"]["coordinator"]["guesses"] = "many"
    run = audited_run(tmp_path, audit)
    field = r"summary\.json: 'empirical-privacy\.adversaries\.coordinator\.guesses': expected a whole number"
    with pytest.raises(ConfigError, match=field):
        load_run(run)
    audit = copy.deepcopy(AUDIT)
    audit["membership-inference"]["tpr-at-fpr"] = {"one percent": 0.1}
    with pytest.raises(ConfigError, match=r"'empirical-privacy\.membership-inference\.tpr-at-fpr'"):
        model_card(audited_run(tmp_path / "b", audit))


def test_audit_curve_of_a_sweep_writes_a_png(tmp_path):
    points = [
        (1.0, {"coordinator": 0.1, "final-model": 0.0}),
        (1.0, {"coordinator": 0.3, "final-model": 0.05}),  # a second seed at the same ε
        (3.0, {"coordinator": 0.6, "final-model": 0.2}),
        (8.0, {"coordinator": 1.4, "final-model": 0.4, "coordinator-knowing-seed": 9.5}),
        (None, {"coordinator": 5.2, "final-model": 2.1}),  # DP off: no claimed ε
    ]
    path = plot_audit_curve(points, tmp_path / "audit-curve.png")
    assert path == tmp_path / "audit-curve.png"
    _assert_png(path)
    with pytest.raises(ValueError, match="at least one"):
        plot_audit_curve([], tmp_path / "empty.png")


def test_terminal_summary_names_the_bound_and_the_leak(leaking):
    from rich.console import Console

    from fedward.server.report.cli import print_report

    out = Console(width=80, record=True, file=io.StringIO())
    print_report(leaking, out)
    assert "empirical privacy at site-0: ε ≥ 3.54 (95 %), claimed 3.00 LEAK" in out.export_text()
