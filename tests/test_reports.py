"""Reports: figures and the self-contained HTML page, built from real (tiny) training runs."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from conftest import QUIET
from grace_rul.errors import GraceError
from grace_rul.experiments.summary import format_stat, results_frame, summarise
from grace_rul.reports import figures as F
from grace_rul.reports import write_report
from grace_rul.reports.commands import add_report_parser
from grace_rul.reports.loading import load_run
from grace_rul.resolve import resolve_config
from grace_rul.trainer import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = {
    "training_curves": F.TITLE_CURVES,
    "task_weights": F.TITLE_WEIGHTS,
    "grad_norms": F.TITLE_GRAD_NORMS,
    "predictions": F.TITLE_PREDICTIONS,
    "trajectories": F.TITLE_TRAJECTORIES,
    "confusion": F.TITLE_CONFUSION,
}
SWEEP_FIGURES = {
    "box_rmse": F.TITLE_BOX_RMSE,
    "box_nasa": F.TITLE_BOX_NASA,
    "task_weights": F.TITLE_WEIGHTS_SWEEP,
}


def _train(out: Path, **overrides) -> dict:
    torch.set_num_threads(1)
    base = {"data": {"dataset": "FD001"}, "train": {"epochs": 2}}
    for section, values in overrides.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return train(resolve_config("tiny", overrides=base), out, execution=QUIET)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real tiny FD001 runs: GABA (validation protocol) and equal weights (paper protocol)."""
    root = tmp_path_factory.mktemp("report_runs")
    gaba, equal = root / "gaba", root / "equal"
    _train(gaba, balancer={"name": "gaba"}, seed=42)
    _train(equal, balancer={"name": "equal"}, train={"protocol": "paper"}, seed=7)
    return {"gaba": gaba, "equal": equal}


class _Page(HTMLParser):
    """Collects <img> attributes, <figcaption> text and all visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.captions: list[str] = []
        self.text: list[str] = []
        self.tables = 0
        self._in_caption = False
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag == "figcaption":
            self._in_caption = True
            self.captions.append("")
        elif tag == "table":
            self.tables += 1
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False
        if tag not in ("img", "meta", "br"):
            assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> in {self.stack}"
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_caption:
            self.captions[-1] += data


def _parse(html_path: Path) -> _Page:
    text = html_path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    # Self-contained: nothing loaded from elsewhere.
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text
    return page


def _check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert np.ptp(img[..., :3]) > 0.5  # something drawn, not a blank canvas


def _check_figures(page: _Page, expected: dict[str, str]) -> None:
    alts = [img.get("alt") for img in page.imgs]
    assert sorted(alts) == sorted(expected.values())
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG_MAGIC
    for title in expected.values():
        assert any(c.startswith(title) for c in page.captions), title


def test_run_report_writes_every_figure_and_a_self_contained_page(runs, tmp_path):
    html = write_report(runs["gaba"], tmp_path / "rep")
    assert html == tmp_path / "rep" / "report.html"
    for name in RUN_FIGURES:
        _check_png(tmp_path / "rep" / f"{name}.png")
    page = _parse(html)
    _check_figures(page, RUN_FIGURES)

    metrics = json.loads((runs["gaba"] / "metrics.json").read_text())
    text = " ".join(page.text)
    assert f"{metrics['test']['rmse_last']:.2f}" in text
    assert f"{metrics['test']['nasa_score']:.1f}" in text
    assert f"{metrics['test']['mae']:.2f}" in text
    assert f"{100 * metrics['test']['health_accuracy']:.1f}%" in text
    assert f"{metrics['best_epoch']} / {metrics['epochs_run']}" in text
    assert str(metrics["params"]) in text.replace(",", "")
    assert "validation-selected" in text
    assert "test-selected (optimistic)" not in text
    # The NASA score is in the predictions figure's title.
    caption = next(c for c in page.captions if c.startswith(F.TITLE_PREDICTIONS))
    assert f"NASA score {metrics['test']['nasa_score']:.1f}" in caption


def test_default_output_dir_and_stale_figures_removed(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["gaba"], run)
    html = write_report(run)
    assert html == run / "report" / "report.html"
    (run / "trajectories.csv").unlink()
    write_report(run)
    assert not (run / "report" / "trajectories.png").exists()


def test_paper_protocol_is_labelled_prominently(runs, tmp_path):
    html = write_report(runs["equal"], tmp_path / "rep")
    text = html.read_text(encoding="utf-8")
    assert 'class="banner paper"' in text
    assert "Protocol: test-selected (optimistic)" in text
    page = _parse(html)
    _check_figures(page, RUN_FIGURES)
    # test_rmse per epoch exists under the paper protocol and is drawn as a second curve
    fig = F.training_curves(load_run(runs["equal"])).figure
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "test RMSE (per epoch)" in labels


def test_missing_optional_files_skip_their_figures_with_a_note(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["gaba"], run)
    (run / "trajectories.csv").unlink()
    (run / "grad_norms.npy").unlink()
    (run / "gradient_stats.csv").write_text("")  # present but empty
    html = write_report(run, tmp_path / "rep")
    page = _parse(html)
    expected = {
        k: v
        for k, v in RUN_FIGURES.items()
        if k not in ("trajectories", "grad_norms", "task_weights")
    }
    _check_figures(page, expected)
    text = " ".join(page.text)
    assert "not drawn: trajectories.csv not found" in text
    assert "not drawn: grad_norms.npy not found" in text
    assert "not drawn: gradient_stats.csv could not be read" in text
    assert not (tmp_path / "rep" / "trajectories.png").exists()


def test_histogram_threshold_and_clipped_fraction_match_the_run(runs, tmp_path):
    run = load_run(runs["gaba"])
    norms = np.load(runs["gaba"] / "grad_norms.npy")
    threshold = float(run.grad_stats["clip_threshold"].iloc[-1])
    fig = F.grad_norm_histogram(run)
    ax = fig.figure.axes[0]
    vlines = [line for line in ax.get_lines() if line.get_xdata()[0] == threshold]
    assert len(vlines) == 1
    share = 100 * float(np.mean(norms > threshold))
    assert f"{share:.1f}% clipped" in fig.subtitle
    assert ax.get_xlabel() and ax.get_ylabel() == "steps"

    # non-finite norms are left out of the histogram and counted
    bad = tmp_path / "run"
    shutil.copytree(runs["gaba"], bad)
    np.save(bad / "grad_norms.npy", np.append(norms, [np.nan, np.inf]).astype(np.float32))
    assert "2 non-finite" in F.grad_norm_histogram(load_run(bad)).subtitle


def test_confusion_figure_annotates_the_counts(runs):
    run = load_run(runs["gaba"])
    fig = F.confusion_plot(run).figure
    ax = fig.axes[0]
    counts = [int(t.get_text().split("\n")[0]) for t in ax.texts]
    assert counts == [c for row in run.test["confusion"] for c in row]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["healthy", "degrading", "critical"]


def _sweep(runs: dict[str, Path], root: Path) -> Path:
    for name, src in runs.items():
        shutil.copytree(
            src, root / "runs" / f"FD001-{name}", ignore=shutil.ignore_patterns("report")
        )
    return root


def test_sweep_report_has_box_plot_and_computed_summary(runs, tmp_path):
    sweep = _sweep(runs, tmp_path / "sweep")
    html = write_report(sweep)
    assert html == sweep / "report" / "report.html"
    for name in SWEEP_FIGURES:
        _check_png(sweep / "report" / f"{name}.png")
    page = _parse(html)
    _check_figures(page, SWEEP_FIGURES)
    text = " ".join(page.text)
    assert "mean ± sample std" in text
    assert "gaba" in text and "equal" in text
    # one of the two cells used the paper protocol: flagged on the sweep page too
    assert "Protocol: test-selected (optimistic)" in text and "1 of 2 runs" in text
    box = F.metric_boxplot(
        F.cells_table([load_run(d) for d in (sweep / "runs").iterdir()]), "rmse_last"
    )
    ax = box.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gaba", "equal"]
    assert ax.get_ylabel() == "test RMSE, last window (cycles)"


def test_sweep_report_summary_is_computed_not_read_and_lists_unfinished_cells(runs, tmp_path):
    sweep = _sweep(runs, tmp_path / "sweep")
    # A summary.md that disagrees with the cells is not what the page shows.
    (sweep / "summary.md").write_text(
        "# Sweep s\n\n## Test RMSE (last window)\n\n"
        "| balancer | FD001 |\n|---|---|\n| gaba | 99.99 ± n/a (n=1) |\n"
    )
    (sweep / "results.csv").write_text(
        "dataset,balancer,seed,status,rmse_last,error\n"
        "FD001,gaba,42,done,20.0,\nFD002,gaba,42,failed,,CUDA out of memory\n"
    )
    page = _parse(write_report(sweep, tmp_path / "rep"))
    text = " ".join(page.text)
    assert "99.99" not in text
    for name in ("gaba", "equal"):
        rmse = json.loads((runs[name] / "metrics.json").read_text())["test"]["rmse_last"]
        assert format_stat(rmse, float("nan"), 1, 2) in text  # "xx.xx ± n/a (n=1)"
    assert "2 of 2 cells done, 0 failed, 0 not finished" in text
    assert "1 row(s) in results.csv without a finished run dir" in text
    assert "CUDA out of memory" in text


def test_summary_html_escapes_and_marks_the_best():
    rows = [("<b>x</b>", 1, 12.0), ("<b>x</b>", 2, 14.0), ("equal", 1, 15.0)]
    frame = results_frame(
        [
            {"dataset": "FD001", "balancer": b, "seed": s, "status": "done", "rmse_last": r}
            | {"nasa_score": 300.0, "protocol": "paper"}
            for b, s, r in rows
        ]
    )
    out = summarise(frame).to_html()
    assert "<p>Protocol: <strong>test-selected (optimistic)</strong></p>" in out
    assert "<tr><th>balancer</th><th>FD001</th></tr>" in out
    assert (
        "<tr><td>&lt;b&gt;x&lt;/b&gt;</td><td><strong>13.00 ± 1.41 (n=2)</strong></td></tr>" in out
    )
    assert "<tr><td>equal</td><td>15.00 ± n/a (n=1)</td></tr>" in out
    assert "<b>" not in out
    assert "<h3>Test RMSE (last window)</h3>" in out and "<h3>NASA score</h3>" in out


def test_directory_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(GraceError, match=r"no run found in .*metrics\.json \+ history\.csv"):
        write_report(tmp_path)
    (tmp_path / "runs" / "cell").mkdir(parents=True)  # a sweep with no finished cell
    with pytest.raises(GraceError, match=r"runs/\*/metrics\.json \(a sweep dir\)"):
        write_report(tmp_path)
    with pytest.raises(GraceError, match="no such directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "history.csv").write_text("epoch,train_loss,val_rmse\n1,1.0,2.0\n")
    with pytest.raises(GraceError, match="has not finished"):
        write_report(tmp_path)


def test_cli_report_command(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="grace")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(runs["gaba"]), "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert (tmp_path / "o" / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out
    args = parser.parse_args(["report", str(tmp_path / "o")])
    with pytest.raises(GraceError, match="no run found"):
        args.func(args)
