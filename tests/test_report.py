"""`fedward report`: figures, self-contained HTML, TensorBoard, MLflow, terminal table, a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedward.common.errors import ConfigError, FedwardError
from fedward.server.report.build import make_report
from fedward.server.report.data import load_run, pooled_confusion
from fedward.server.report.tensorboard_log import TensorBoardLog

SITES = ("site-0", "site-1", "site-2")
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _ckd_eval(site: int, rnd: int) -> dict:
    """Consistent CKD metrics from confusion counts that improve with the round."""
    tp, fn = 12 + rnd + site, 4 - rnd
    tn, fp = 9 + site, 3 - rnd
    n = tp + fp + tn + fn
    return {
        "accuracy": (tp + tn) / n, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
        "f1": 2 * tp / (2 * tp + fp + fn), "roc-auc": 0.8 + 0.05 * rnd, "loss": 0.6 / rnd + 0.1 * site,
        "tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn), "num-examples": float(n),
        "site-weight": 1,
    }  # fmt: skip


def _tumour_eval(site: int, rnd: int) -> dict:
    """4-class metrics with `cm-i-j` counts, as common/metrics.py:multiclass_metrics sends them."""
    cm = np.full((4, 4), 1.0) + np.eye(4) * (rnd + site)
    out = {f"cm-{i}-{j}": float(cm[i, j]) for i in range(4) for j in range(4)}
    acc = float(np.trace(cm) / cm.sum())
    return {**out, "accuracy": acc, "sensitivity": acc, "specificity": 0.9, "f1": acc, "roc-auc": None,
            "loss": 1.5 / rnd, "num-examples": float(cm.sum())}  # fmt: skip


def _seg_eval(site: int, rnd: int) -> dict:
    return {"dice": 0.3 * rnd + 0.02 * site, "dice-voxels": 0.25 * rnd, "hd95": 30.0 / rnd, "loss": 0.7 / rnd,
            "dice-cases": 2.0, "hd95-cases": 2.0, "seg-tp": 100.0 * rnd, "seg-fp": 40.0, "seg-fn": 30.0,
            "num-examples": 2.0}  # fmt: skip


def _pool(evals: list[dict]) -> dict:
    n = sum(e["num-examples"] for e in evals)
    keys = [k for k, v in evals[0].items() if isinstance(v, float) and k != "num-examples"]
    out = {k: sum(e[k] * e["num-examples"] for e in evals) / n for k in keys}
    return {**out, "num-examples": n}


def _budget(epsilon: float, cap: float = 8.0) -> dict:
    return {"epsilon-lifetime": epsilon, "epsilon-cap": cap, "epsilon-left": cap - epsilon}


def write_run(root: Path, name: str = "sample", task: str = "ckd", cross_site: bool = True) -> Path:
    """A run directory as server/app.py writes it: 3 rounds x 3 sites (+ cross-site.json)."""
    make = {"ckd": _ckd_eval, "tumour": _tumour_eval, "tumour-seg": _seg_eval}[task]
    run = root / name
    run.mkdir(parents=True)
    reports = {s: {"num-train": 100 + i, "num-test": 27, "rows-read": 134.0} for i, s in enumerate(SITES)}
    config = {"run-name": name, "task": task, "strategy": "fedprox", "dp": True, "dp-target-epsilon": 3.0,
              "dp-noise-multiplier": 0.0, "num-server-rounds": 3}  # fmt: skip
    (run / "config.json").write_text(json.dumps({"run-config": config, "sites": reports}))
    lines = []
    for rnd in (1, 2, 3):
        evals = {s: make(i, rnd) for i, s in enumerate(SITES)}
        eps = {s: round(rnd * (0.9 + 0.05 * i), 4) for i, s in enumerate(SITES)}
        record = {
            "round": rnd,
            "overall": _pool(list(evals.values())),
            "sites": {
                s: {"evaluate": evals[s], "train": {"train-loss": 0.7 / rnd, "epsilon": e, "delta": 1e-3}}
                for s, e in eps.items()
            },
            "epsilon": eps,
            "budget": {s: _budget(e) for s, e in eps.items()},
            "failures": ["site-2: data folder unreadable"] if rnd == 2 else [],
            "rejected": {"site-1": "update norm 93.1 above 10 x median 2.0"} if rnd == 3 else {},
            "round-seconds": 4.0,
            "elapsed-seconds": 4.0 * rnd,
        }  # fmt: skip
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    final = json.loads(lines[-1])
    sites = {}
    for s in SITES:
        evaluate = dict(final["sites"][s]["evaluate"])
        if task == "ckd":
            acc = evaluate["accuracy"]
            evaluate.update({"accuracy-ci-low": acc - 0.1, "accuracy-ci-high": min(1.0, acc + 0.05)})
        sites[s] = {"evaluate": evaluate, "epsilon": final["epsilon"][s], **final["budget"][s], "delta": 1e-3,
                    "privacy-steps": 21, "refused": None, "updates-rejected": int(s == "site-1"),
                    "data": reports[s]}  # fmt: skip
    summary = {"task": task, "strategy": "fedprox", "rounds": 3, "rounds-completed": 3, "dp": True,
               "stopped": None, "central-dp": None, "overall": final["overall"], "sites": sites,
               "wall-seconds": 12.5}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    if cross_site:
        metric = "dice" if task == "tumour-seg" else "accuracy"
        cross = {
            "sites": list(SITES),
            "metric": metric,
            "global": {s: {metric: 0.9 - 0.05 * i} for i, s in enumerate(SITES)},
            "local": {t: {s: {metric: 0.6 + 0.1 * (t == s)} for s in SITES} for t in SITES},
            "leave-one-out": {s: {metric: 0.8 - 0.1 * i} for i, s in enumerate(SITES)},
        }  # fmt: skip
        (run / "cross-site.json").write_text(json.dumps(cross))
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One full report (with cross-site.json) shared by the read-only tests."""
    return make_report(write_run(tmp_path_factory.mktemp("runs")))


def _assert_real_png(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.width > 300 and image.height > 200
    assert len(data) > 10_000
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.var() > 0, "blank image"
    assert (pixels < 128).mean() > 0.005, "almost nothing drawn"


def test_report_writes_every_figure_as_a_real_png(report):
    names = sorted(p.name for p in report.images)
    expected = [
        "confusion-matrix.png",
        "cross-site.png",
        "epsilon.png",
        "metrics-per-round.png",
        "site-metrics.png",
    ]
    assert names == expected
    for path in report.images:
        assert path.parent == report.run.path / "report"
        _assert_real_png(path.read_bytes())


def test_html_embeds_each_figure_and_loads_nothing_from_outside(report):
    html = report.html.read_text()
    embedded = IMG.findall(html)
    assert len(embedded) == len(report.images) == 5
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in report.images)
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "http://" not in html and "https://" not in html
    assert "<title>fedward report: sample (ckd, fedprox)</title>" in html


def test_html_tables_show_final_metrics_ci_privacy_and_failures(report):
    html = report.html.read_text()
    summary = json.loads((report.run.path / "summary.json").read_text())
    site0 = summary["sites"]["site-0"]["evaluate"]
    ci = f"[{site0['accuracy-ci-low']:.3f}, {site0['accuracy-ci-high']:.3f}]"
    assert f'{site0["accuracy"]:.3f} <span class="ci">{ci}</span>' in html
    assert f"<td>{summary['overall']['f1']:.3f}</td>" in html
    assert f"<td>{summary['sites']['site-2']['epsilon']:.3f}</td>" in html  # ε this run
    assert f"<td>{summary['sites']['site-2']['epsilon-left']:.3f}</td>" in html  # budget left
    assert "round 2: site-2: data folder unreadable" in html
    assert "round 3: update of site-1 rejected: update norm 93.1" in html
    assert "Completed 3 of 3 rounds." in html


def test_text_from_the_run_is_escaped(tmp_path):
    run = write_run(tmp_path, cross_site=False)
    config = json.loads((run / "config.json").read_text())
    config["run-config"]["run-name"] = "<script>alert(1)</script>&"
    (run / "config.json").write_text(json.dumps(config))
    summary = json.loads((run / "summary.json").read_text())
    summary["stopped"] = 'round 2: only 1 site(s) trained <b>"x"</b>'
    (run / "summary.json").write_text(json.dumps(summary))
    html = make_report(run, tensorboard=False).html.read_text()
    assert "<script>alert" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in html
    assert "Stopped: round 2: only 1 site(s) trained &lt;b&gt;&quot;x&quot;&lt;/b&gt;" in html


def test_run_without_cross_site_still_reports_with_a_note(tmp_path):
    run = write_run(tmp_path, cross_site=False)
    (run / "report").mkdir()
    (run / "report" / "cross-site.png").write_bytes(b"stale")  # from an earlier report
    report = make_report(run, tensorboard=False)
    assert [f.name for f in report.figures if f.path is None] == ["cross-site"]
    assert not (run / "report" / "cross-site.png").exists()
    html = report.html.read_text()
    assert len(IMG.findall(html)) == 4
    assert "No cross-site.json in the run directory." in html


def test_unfinished_run_reports_from_metrics_alone(tmp_path):
    run = write_run(tmp_path, cross_site=False)
    (run / "summary.json").unlink()
    (run / "config.json").unlink()
    report = make_report(run, tensorboard=False)
    assert len(report.images) == 4
    html = report.html.read_text()
    assert "No summary.json: the run is unfinished or crashed after round 3." in html
    assert "<td>site-1</td>" in html


def test_tumour_confusion_matrix_pools_sites_and_names_classes(tmp_path):
    run = write_run(tmp_path, task="tumour", cross_site=False)
    matrix, names = pooled_confusion(load_run(run))
    expected = sum(np.full((4, 4), 1.0) + np.eye(4) * (3 + site) for site in range(3))
    np.testing.assert_array_equal(matrix, expected)
    assert names == ["glioma", "meningioma", "pituitary", "notumor"]
    report = make_report(run, tensorboard=False)
    assert "confusion-matrix.png" in [p.name for p in report.images]


def test_confusion_reader_accepts_confusion_keys_and_binary_counts(tmp_path):
    run = write_run(tmp_path, task="tumour", cross_site=False)
    summary = json.loads((run / "summary.json").read_text())
    for info in summary["sites"].values():
        ev = info["evaluate"]
        info["evaluate"] = {re.sub(r"^cm-", "confusion-", k): v for k, v in ev.items()}
    (run / "summary.json").write_text(json.dumps(summary))
    matrix, _ = pooled_confusion(load_run(run))
    assert matrix.shape == (4, 4) and matrix[0, 0] == 3 + 4 + 5 + 3

    ckd = load_run(write_run(tmp_path / "ckd", cross_site=False))
    matrix, names = pooled_confusion(ckd)
    evals = ckd.final_evaluations().values()
    assert names == ["notckd", "ckd"]
    assert matrix[1, 1] == sum(e["tp"] for e in evals) and matrix[0, 1] == sum(e["fp"] for e in evals)


def test_segmentation_run_has_no_confusion_matrix_but_dice_figures(tmp_path):
    report = make_report(write_run(tmp_path, task="tumour-seg"), tensorboard=False)
    assert [f.name for f in report.figures if f.path is None] == ["confusion"]
    html = report.html.read_text()
    assert "This task reports no confusion counts" in html
    assert "<th>dice</th>" in html and "<th>hd95</th>" in html


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_scalars_read_back(report):
    tb = report.tensorboard
    rounds = report.run.rounds
    overall = _scalars(tb / "overall", "evaluate/accuracy")
    assert [s for s, _ in overall] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in overall], [r["overall"]["accuracy"] for r in rounds], rtol=1e-6)
    eps = _scalars(tb / "site" / "site-2", "privacy/epsilon")
    np.testing.assert_allclose([v for _, v in eps], [r["epsilon"]["site-2"] for r in rounds], rtol=1e-6)
    f1 = _scalars(tb / "site" / "site-0", "evaluate/f1")
    np.testing.assert_allclose([v for _, v in f1], [r["sites"]["site-0"]["evaluate"]["f1"] for r in rounds])
    assert [v for _, v in _scalars(tb / "overall", "round/failures")] == [0.0, 1.0, 0.0]


def test_tensorboard_rewrite_replaces_earlier_events(tmp_path):
    run = write_run(tmp_path, cross_site=False)
    make_report(run, mlflow=False)
    make_report(run, mlflow=False)
    assert len(list((run / "tensorboard" / "overall").glob("events.out.tfevents.*"))) == 1
    assert len(_scalars(run / "tensorboard" / "overall", "evaluate/accuracy")) == 3


def test_tensorboard_log_one_round_at_a_time(tmp_path):
    run = write_run(tmp_path, cross_site=False)
    records = load_run(run).rounds
    log = TensorBoardLog(tmp_path / "live")
    log.add_round(records[0])
    assert [s for s, _ in _scalars(tmp_path / "live" / "site" / "site-1", "evaluate/accuracy")] == [1]
    for record in records[1:]:
        log.add_round(record)
    log.close()
    assert [s for s, _ in _scalars(tmp_path / "live" / "site" / "site-1", "train/train-loss")] == [1, 2, 3]


def test_mlflow_absent_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    report = make_report(write_run(tmp_path, cross_site=False), tensorboard=False)
    assert report.mlflow_run_id is None
    assert report.html.is_file() and not (tmp_path / "mlruns").exists()


def test_mlflow_logs_params_metrics_per_round_and_artifacts(tmp_path, monkeypatch):
    """Against the real mlflow package (the `mlflow` extra; the dev extra installs mlflow-skinny) and a
    local file store: what fedward logged is read back with MLflow's own client."""
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for a local file store
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    report = make_report(write_run(tmp_path), tensorboard=False)
    assert report.mlflow_run_id
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    logged = client.get_run(report.mlflow_run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "fedward"
    assert logged.data.params["strategy"] == "fedprox"
    accuracy = client.get_metric_history(report.mlflow_run_id, "accuracy")
    assert [m.step for m in accuracy] == [1, 2, 3]
    assert accuracy[-1].value == pytest.approx(report.run.rounds[2]["overall"]["accuracy"])
    epsilon = client.get_metric_history(report.mlflow_run_id, "site-1/epsilon")
    assert epsilon[-1].value == pytest.approx(report.run.rounds[2]["epsilon"]["site-1"])
    assert "site-0/f1" in logged.data.metrics and "site-0/tp" not in logged.data.metrics
    artifacts = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert "report.html" in artifacts and "report" in artifacts


def test_an_mlflow_store_that_refuses_the_run_is_one_clear_error_after_the_report(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = write_run(tmp_path, cross_site=False)
    with pytest.raises(FedwardError, match=r"MLflow .* did not take the run"):
        make_report(run, tensorboard=False)
    assert (run / "report.html").is_file()


def test_cli_prints_summary_table(tmp_path):
    from fedward.cli import app

    run = write_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run), "--no-tensorboard"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "sample · ckd · fedprox · 3 rounds" in result.output
    for site in (*SITES, "overall"):
        assert site in result.output
    final = json.loads((run / "summary.json").read_text())
    assert f"{final['sites']['site-1']['epsilon']:.3f}" in result.output
    assert f"report: {run / 'report.html'}" in result.output
    assert (run / "report.html").is_file() and not (run / "tensorboard").exists()


def test_terminal_summary_reads_in_full_at_80_columns(report):
    from rich.console import Console

    from fedward.server.report.cli import print_report

    out = Console(width=80, record=True, file=io.StringIO())
    print_report(report, out)
    text = out.export_text()
    assert "…" not in text, text
    lines = text.splitlines()
    assert "sample · ckd · fedprox · 3 rounds" in lines[0]
    summary = json.loads((report.run.path / "summary.json").read_text())
    for site in SITES:
        final = summary["sites"][site]
        rows = [line.split() for line in lines if line.startswith(f"{site} ")]
        assert len(rows) >= 3, text  # estimates (one table or more) and intervals
        cells = [cell for row in rows for cell in row]
        evaluate = final["evaluate"]
        for key in ("accuracy", "roc-auc", "sensitivity", "specificity", "f1", "loss"):
            assert f"{evaluate[key]:.3f}" in cells, (site, key, text)
        assert f"{final['epsilon']:.3f}" in cells and f"{evaluate['num-examples']:.0f}" in cells
        low, high = evaluate["accuracy-ci-low"], evaluate["accuracy-ci-high"]
        assert f"[{low:.2f}, {high:.2f}]" in " ".join(cells), (site, text)
    overall = " ".join(line for line in lines if line.startswith("overall "))
    assert f"{summary['overall']['accuracy']:.3f}" in overall


def test_missing_or_broken_run_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such run directory"):
        load_run(tmp_path / "nope")
    run = write_run(tmp_path, cross_site=False)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ConfigError, match=r"metrics\.jsonl: line 4: not valid JSON"):
        load_run(run)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"metrics\.jsonl: missing"):
        load_run(run)
    other = write_run(tmp_path / "x")
    (other / "cross-site.json").write_text(json.dumps({"metric": "accuracy"}))
    with pytest.raises(ConfigError, match=r"cross-site\.json: expected 'sites'"):
        load_run(other)


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must `apt-get install -y chromium`")
        pytest.skip("chromium not installed (required when CI is set)")
    return found


def test_report_renders_its_figures_in_headless_chromium(report, tmp_path):
    chromium = _chromium()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]  # fmt: skip
    url = report.html.as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert 'data-images-total="5"' in body[0]
    assert 'data-images-loaded="5"' in body[0], "a figure did not decode in the browser"

    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,3000", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    _assert_real_png(shot.read_bytes())
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert len({tuple(p) for p in pixels[::7, ::7].reshape(-1, 3)}) > 50, "the page rendered without figures"
