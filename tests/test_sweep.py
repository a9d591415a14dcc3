"""Sweeps end to end on the bundled FD001 (preset tiny, 1 epoch, 1 torch thread per cell).

The grid is FD001 x {equal, gaba} x {42, 123} (4 cells), trained once by a module
fixture through the local pool (2 workers); tests that modify a sweep work on a copy.
Only the formatting unit test uses hand-made metrics.json files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import grace_rul
from grace_rul.checkpoint import atomic_torch_save
from grace_rul.config import Execution
from grace_rul.errors import GraceError
from grace_rul.experiments import sweep as sweep_module
from grace_rul.experiments.executors import ExecutorSpec, make_executor, threads_per_cell
from grace_rul.experiments.grid import CellState, Grid, cell_dir, read_grid
from grace_rul.experiments.summary import collect_results, format_table, summarise
from grace_rul.experiments.sweep import plan_cells, run_sweep
from grace_rul.rundir import CONFIG, LAST, METRICS, RunDir

CELLS = ["FD001-equal-s42", "FD001-equal-s123", "FD001-gaba-s42", "FD001-gaba-s123"]
GRID = dict(datasets=["FD001"], balancers=["equal", "gaba"], seeds=[42, 123], preset="tiny")
TRAIN = {"train": {"epochs": 1}}
ONE_THREAD = Execution(threads=1)
TWO_WORKERS = ExecutorSpec(workers=2)


def _metrics(sweep: Path, name: str) -> dict:
    return json.loads((sweep / "runs" / name / "metrics.json").read_text())


def _cli(argv: list[str]) -> int:
    """``grace ...`` through the real command line entry point."""
    from grace_rul.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep") / "base"
    result = run_sweep(
        sweep, **GRID, overrides=TRAIN, execution=ONE_THREAD, executor=TWO_WORKERS, progress=False
    )
    return sweep, result


def _copy(base_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(base_dir, dst)
    return dst


@pytest.mark.slow
def test_sweep_trains_every_cell_into_run_dirs(base):
    sweep, result = base
    assert result.ok and sorted(result.trained) == sorted(CELLS)
    assert not result.skipped and not result.resumed and not result.rerun
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == sorted(CELLS)
    grid = yaml.safe_load((sweep / "sweep.yaml").read_text())
    settings = grid.pop("settings")  # the resolved base config, axes left out
    assert settings["train"]["epochs"] == 1 and "dataset" not in settings["data"]
    assert "seed" not in settings and "name" not in settings["balancer"]
    assert grid == {
        "datasets": ["FD001"],
        "balancers": ["equal", "gaba"],
        "seeds": [42, 123],
        "preset": "tiny",
        "overrides": {"train": {"epochs": 1}},
        "protocol": "val",
    }
    for name in CELLS:
        m = _metrics(sweep, name)
        dataset, balancer, seed = name.split("-")
        assert (m["dataset"], m["balancer"], m["seed"]) == (dataset, balancer, int(seed[1:]))
        assert m["epochs_run"] == 1 and m["protocol"] == "val"
        cfg = yaml.safe_load((sweep / "runs" / name / "config.yaml").read_text())
        assert cfg["preset"] == "tiny" and "threads" not in cfg["train"]
        assert m["threads"] == 1  # an execution setting: in metrics.json, not in the config
        assert m["cpu"] == grace_rul.cpu_model() and m["cpu"]  # what timed it
    assert not (sweep / "failures.json").exists()
    for f in ("results.csv", "summary.md", "summary.csv", "sweep.log"):
        assert (sweep / f).is_file()


@pytest.mark.slow
def test_results_and_summary_equal_per_cell_metrics(base):
    sweep, _ = base
    df = pd.read_csv(sweep / "results.csv")
    assert len(df) == 4 and set(df["status"]) == {"done"}
    for _, row in df.iterrows():
        m = _metrics(sweep, f"{row.dataset}-{row.balancer}-s{row.seed}")
        assert row.rmse_last == pytest.approx(m["test"]["rmse_last"], rel=1e-12)
        assert row.nasa_score == pytest.approx(m["test"]["nasa_score"], rel=1e-12)
        assert row.health_accuracy == pytest.approx(m["test"]["health_accuracy"], rel=1e-12)
        assert (row.best_epoch, row.epochs_run, row.protocol) == (
            m["best_epoch"],
            m["epochs_run"],
            "val",
        )
    summary = pd.read_csv(sweep / "summary.csv")
    md = (sweep / "summary.md").read_text()
    assert "Protocol: **validation-selected**" in md
    means = {}
    for b in ("equal", "gaba"):
        rmse = [_metrics(sweep, f"FD001-{b}-s{s}")["test"]["rmse_last"] for s in (42, 123)]
        nasa = [_metrics(sweep, f"FD001-{b}-s{s}")["test"]["nasa_score"] for s in (42, 123)]
        row = summary[summary["balancer"] == b].iloc[0]
        assert row["n"] == 2
        assert row["rmse_mean"] == pytest.approx(np.mean(rmse), rel=1e-12)
        assert row["rmse_std"] == pytest.approx(np.std(rmse, ddof=1), rel=1e-12)
        assert row["nasa_mean"] == pytest.approx(np.mean(nasa), rel=1e-12)
        assert row["nasa_std"] == pytest.approx(np.std(nasa, ddof=1), rel=1e-12)
        text = f"{np.mean(rmse):.2f} ± {np.std(rmse, ddof=1):.2f} (n=2)"
        assert row["rmse_text"] == text and text in md
        means[b] = np.mean(rmse)
    best = min(means, key=means.get)
    assert f"| {best} | **{summary[summary.balancer == best].iloc[0]['rmse_text']}** |" in md


@pytest.mark.slow
def test_rerun_skips_finished_resumes_interrupted_and_reruns_corrupt(base, tmp_path):
    sweep = _copy(base[0], tmp_path)
    runs = sweep / "runs"
    before = {n: _metrics(sweep, n) for n in CELLS}
    finished = "FD001-equal-s42"
    mtime = (runs / finished / "metrics.json").stat().st_mtime_ns
    # interrupted: metrics.json gone, last.pt kept
    (runs / "FD001-equal-s123" / "metrics.json").unlink()
    # corrupt checkpoint (and not finished)
    (runs / "FD001-gaba-s42" / "metrics.json").unlink()
    last = runs / "FD001-gaba-s42" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    # corrupt metrics.json
    (runs / "FD001-gaba-s123" / "metrics.json").write_text('{"test": {"rmse_la')

    result = run_sweep(
        sweep, **GRID, overrides=TRAIN, execution=ONE_THREAD, executor=TWO_WORKERS, progress=False
    )

    assert result.ok, result.failed
    assert result.skipped == [finished] and not result.trained
    assert result.resumed == ["FD001-equal-s123"]
    assert sorted(result.rerun) == ["FD001-gaba-s123", "FD001-gaba-s42"]
    assert (runs / finished / "metrics.json").stat().st_mtime_ns == mtime
    assert "resumed from" in (runs / "FD001-equal-s123" / "events.log").read_text()
    for n in ("FD001-gaba-s42", "FD001-gaba-s123"):  # wiped: a fresh events.log, no resume
        assert "resumed" not in (runs / n / "events.log").read_text()
    log = (sweep / "sweep.log").read_text()
    assert "FD001-gaba-s42: corrupt (unreadable checkpoints/last.pt" in log
    assert "FD001-gaba-s123: corrupt (unreadable metrics.json" in log
    # Same seed, same thread count, CPU: resumed and re-run cells reproduce the first results.
    for n in CELLS:
        assert _metrics(sweep, n)["test"] == before[n]["test"], n

    # A third run has nothing to do: every cell skipped, nothing rewritten; progress shown.
    stamps = {n: (runs / n / "metrics.json").stat().st_mtime_ns for n in CELLS}
    again = run_sweep(
        sweep, **GRID, overrides=TRAIN, execution=ONE_THREAD, executor=TWO_WORKERS, progress=True
    )
    assert sorted(again.skipped) == sorted(CELLS) and not (
        again.trained or again.resumed or again.rerun
    )
    assert stamps == {n: (runs / n / "metrics.json").stat().st_mtime_ns for n in CELLS}


@pytest.mark.slow
def test_grid_mismatch_refused_extend_and_failed_cell(base, tmp_path, capsys):
    sweep = _copy(base[0], tmp_path)
    with pytest.raises(
        GraceError,
        match=r"seeds \[42, 7\] vs \[42, 123\] in sweep.yaml "
        r"\(new: \[7\]; not requested: \[123\]\).*--extend",
    ):
        run_sweep(
            sweep,
            **{**GRID, "seeds": [42, 7]},
            overrides=TRAIN,
            execution=ONE_THREAD,
            progress=False,
        )
    with pytest.raises(GraceError, match=r"preset 'small' vs 'tiny' in sweep.yaml"):
        run_sweep(
            sweep,
            **{**GRID, "preset": "small"},
            overrides=TRAIN,
            execution=ONE_THREAD,
            extend=True,
            progress=False,
        )
    with pytest.raises(GraceError, match=r"overrides"):
        run_sweep(sweep, **GRID, overrides={"train": {"epochs": 2}}, extend=True, progress=False)

    # A cell that cannot run: its directory holds another cell's interrupted run, so the
    # trainer refuses to resume it (settings differ). Retried once, recorded; others finish.
    bad = sweep / "runs" / "FD001-gaba-s7"
    shutil.copytree(sweep / "runs" / "FD001-equal-s42", bad)
    (bad / "metrics.json").unlink()
    argv = [
        "sweep",
        "--datasets",
        "FD001",
        "--balancers",
        "equal",
        "gaba",
        "--seeds",
        "7",
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--extend",
        "--quiet",
        "--out",
        str(sweep),
    ]
    assert _cli(argv) == 1
    err = capsys.readouterr().err
    assert "FD001-gaba-s7" in err and "failures.json" in err
    grid = yaml.safe_load((sweep / "sweep.yaml").read_text())
    assert grid["seeds"] == [42, 123, 7] and grid["balancers"] == ["equal", "gaba"]
    failures = json.loads((sweep / "failures.json").read_text())
    assert list(failures) == ["FD001-gaba-s7"]
    assert failures["FD001-gaba-s7"]["attempts"] == 2
    assert "settings differ" in failures["FD001-gaba-s7"]["error"]
    assert "FD001-gaba-s7: failed (" in (sweep / "sweep.log").read_text()  # the retry
    df = collect_results(sweep, write=False)
    status = dict(
        zip(df["dataset"] + "-" + df["balancer"] + "-s" + df["seed"].astype(str), df["status"])
    )
    assert status.pop("FD001-gaba-s7") == "failed" and set(status.values()) == {"done"}
    assert len(status) == 5
    new = _metrics(sweep, "FD001-equal-s7")
    assert new["threads"] == threads_per_cell(2) == max(1, (os.cpu_count() or 1) // 2)
    md = (sweep / "summary.md").read_text()
    assert "5 of 6 cells done, 1 failed" in md and "(n=3)" in md and "(n=2)" in md

    # Clear the obstacle: the next run trains it and forgets the failure.
    shutil.rmtree(bad)
    result = run_sweep(
        sweep,
        **{**GRID, "seeds": [42, 123, 7]},
        overrides=TRAIN,
        execution=ONE_THREAD,
        progress=False,
    )
    assert result.ok and result.trained == ["FD001-gaba-s7"] and len(result.skipped) == 5
    assert not (sweep / "failures.json").exists()


@pytest.mark.slow
def test_report_shows_the_summary_of_summary_md(base, tmp_path):
    from grace_rul.reports import write_report

    sweep, result = base
    assert result.summary is not None
    page = write_report(sweep, tmp_path / "rep").read_text(encoding="utf-8")
    assert result.summary.to_html() in page  # the object that wrote summary.md, as HTML
    assert "4 of 4 cells done" in page and "Protocol: <strong>validation-selected" in page


@pytest.mark.slow
def test_ray_executor_matches_local(base, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'grace-rul[ray]')")
    sweep = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(
            sweep,
            **GRID,
            overrides=TRAIN,
            execution=ONE_THREAD,
            executor=ExecutorSpec("ray"),
            progress=False,
        )
    finally:
        ray.shutdown()
    assert result.ok and sorted(result.trained) == sorted(CELLS)
    for n in CELLS:
        assert _metrics(sweep, n)["test"] == _metrics(base[0], n)["test"], n


def test_missing_ray_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GraceError, match=r"ray is not installed: pip install 'grace-rul\[ray\]'"):
        make_executor(ExecutorSpec("ray"), threads=1)


@pytest.mark.slow
def test_table_cli_latex_and_formats(base, capsys):
    sweep, _ = base
    assert _cli(["table", str(sweep), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(r"\begin{table}") and r"\toprule" in out and r"\bottomrule" in out
    assert r"\multicolumn{2}{c}{FD001}" in out and "validation-selected" in out
    assert r"\textbf{" in out and "(n=2)" in out and r"$\pm$" in out
    assert format_table(sweep, "csv") == (sweep / "summary.csv").read_text()
    assert format_table(sweep, "markdown") == (sweep / "summary.md").read_text()
    with pytest.raises(GraceError, match="unknown table format"):
        format_table(sweep, "html")
    assert _cli(["table", str(sweep.parent / "nope")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"seeds": [1, 1]}, "seeds lists a value twice"),
        ({"seeds": [-1]}, "non-negative"),
        ({"balancers": []}, "at least one value in balancers"),
        ({"balancers": ["nope"]}, "unknown balancer 'nope'"),
        ({"datasets": ["FD009"]}, "FD009"),
        ({"overrides": {"data": {"dataset": "FD002"}}}, "sweep axis"),
        (
            {
                "balancers": ["fixed", "gaba"],
                "overrides": {"balancer": {"options": {"weights": [1, 0]}}},
            },
            "balancer 'gaba': bad options",
        ),
    ],
)
def test_bad_sweep_input_refused_before_writing(tmp_path, kwargs, words):
    args = {**GRID, "overrides": TRAIN, "progress": False, **kwargs}
    with pytest.raises(GraceError, match=words):
        run_sweep(tmp_path / "s", **args)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kind": "slurm"}, "unknown executor"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_executor_refused_before_writing(tmp_path, kwargs, words):
    with pytest.raises(GraceError, match=words):
        executor = ExecutorSpec(**kwargs)  # checked once, when made
        run_sweep(tmp_path / "s", **GRID, overrides=TRAIN, executor=executor, progress=False)
    assert not (tmp_path / "s").exists()


def test_balancer_options_are_checked_against_the_axis_not_the_default(tmp_path):
    """``fixed`` weights are no option of the preset's default balancer (gaba); a sweep of
    ``fixed`` alone runs them (the single-task arm of benchmarks/review.py)."""
    single = {"train": {"epochs": 1}, "balancer": {"options": {"weights": [1, 0]}}}
    run_sweep(tmp_path / "s", datasets=["FD001"], balancers=["fixed"], seeds=[42],
              preset="tiny", overrides=single, execution=ONE_THREAD, progress=False)  # fmt: skip
    cfg = yaml.safe_load((tmp_path / "s" / "runs" / "FD001-fixed-s42" / "config.yaml").read_text())
    assert (cfg["balancer"]["name"], cfg["balancer"]["options"]) == ("fixed", {"weights": [1, 0]})


def test_refuses_a_directory_that_is_not_a_sweep(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GraceError, match="not a sweep directory"):
        run_sweep(tmp_path, **GRID, overrides=TRAIN, execution=ONE_THREAD, progress=False)


def test_threads_divide_the_cores():
    assert threads_per_cell(1, 16) == 16
    assert threads_per_cell(4, 16) == 4
    assert threads_per_cell(3, 16) == 5
    assert threads_per_cell(32, 16) == 1


# ---- pure aggregation/formatting on hand-made metrics (no training)


def _fake_cell(sweep: Path, name: str, rmse: float, nasa: float, protocol: str = "paper") -> None:
    d = sweep / "runs" / name
    d.mkdir(parents=True)
    dataset, balancer, seed = name.split("-")
    (d / "metrics.json").write_text(
        json.dumps(
            {
                "dataset": dataset,
                "balancer": balancer,
                "seed": int(seed[1:]),
                "protocol": protocol,
                "test": {"rmse_last": rmse, "nasa_score": nasa, "mae": 1.0, "health_accuracy": 0.5},
                "best_epoch": 3,
                "epochs_run": 5,
                "seconds": 1.5,
            }
        )
    )


def test_summary_formatting_rules(tmp_path):
    sweep = tmp_path / "s"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "datasets": ["FD001", "FD002"],
                "balancers": ["equal", "my_gaba"],
                "seeds": [1, 2, 3],
                "preset": "tiny",
                "overrides": {},
                "protocol": "paper",
            }
        )
    )
    for seed, r in zip((1, 2, 3), (12.0, 13.0, 14.0)):
        _fake_cell(sweep, f"FD001-equal-s{seed}", r, 300.0 + seed)
    _fake_cell(sweep, "FD001-my_gaba-s1", 11.0, 250.0)  # one seed only: better mean, no spread
    for seed, r in zip((1, 2), (20.0, 22.0)):
        _fake_cell(sweep, f"FD002-equal-s{seed}", r, 900.0)
    (sweep / "failures.json").write_text(json.dumps({"FD001-my_gaba-s2": {"error": "boom"}}))
    # FD002-my_gaba: nothing finished

    df = collect_results(sweep)
    assert (sweep / "results.csv").is_file() and len(df) == 12
    status = df.set_index(["dataset", "balancer", "seed"])["status"]
    assert (
        status[("FD001", "my_gaba", 2)] == "failed" and status[("FD001", "my_gaba", 3)] == "pending"
    )
    assert df.loc[df.status == "failed", "error"].tolist() == ["boom"]
    s = summarise(df)
    assert s.protocol == "test-selected (optimistic)"
    st = s.stats.set_index(["balancer", "dataset"])
    assert st.loc[("equal", "FD001"), "rmse_text"] == "13.00 ± 1.00 (n=3)"
    assert st.loc[("my_gaba", "FD001"), "rmse_text"] == "11.00 ± n/a (n=1)"
    assert math.isnan(st.loc[("my_gaba", "FD001"), "rmse_std"])
    assert (
        st.loc[("my_gaba", "FD002"), "rmse_text"] == "—" and st.loc[("my_gaba", "FD002"), "n"] == 0
    )
    assert st.loc[("equal", "FD002"), "nasa_text"] == "900.0 ± 0.0 (n=2)"
    assert (
        bool(st.loc[("my_gaba", "FD001"), "best_rmse"])
        and not st.loc[("equal", "FD001"), "best_rmse"]
    )
    assert bool(st.loc[("equal", "FD002"), "best_rmse"])  # the only finished entry of its column
    assert not st.loc[("my_gaba", "FD002"), "best_rmse"]
    md = s.to_markdown()
    assert "Protocol: **test-selected (optimistic)**" in md
    assert "| my_gaba | **11.00 ± n/a (n=1)** | — |" in md
    assert "| equal | 13.00 ± 1.00 (n=3) | **21.00 ± 1.41 (n=2)** |" in md
    tex = s.to_latex()
    assert (
        r"my\_gaba & \textbf{11.00 $\pm$ n/a (n=1)} & \textbf{250.0 $\pm$ n/a (n=1)} & --- & --- \\"
        in tex
    )
    assert "test-selected (optimistic)" in tex

    # Means that print the same are all bold; a lower one that prints higher is not.
    rows = [("a", 10.001), ("a", 10.003), ("b", 10.004), ("c", 10.006), ("c", 10.008)]
    tie = pd.DataFrame(
        {
            "dataset": "FD001",
            "balancer": [b for b, _ in rows],
            "seed": [1, 2, 1, 1, 2],
            "status": "done",
            "rmse_last": [r for _, r in rows],
            "nasa_score": 1.0,
            "protocol": "val",
        }
    )
    st = summarise(tie).stats.set_index("balancer")
    assert st["best_rmse"].tolist() == [True, True, False]
    assert st.loc["a", "rmse_text"] == "10.00 ± 0.00 (n=2)" and st.loc["b", "rmse_text"].startswith(
        "10.00"
    )


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_killed_sweep_takes_its_workers_with_it(tmp_path):
    sweep = tmp_path / "sweep"
    argv = [sys.executable, "-m", "grace_rul.cli", "sweep", "--datasets", "FD001",
            "--balancers", "equal", "--seeds", "42", "--preset", "tiny", "--epochs", "50",
            "--set", "data.window=10", "--threads", "1", "--out", str(sweep)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = sweep / "runs" / "FD001-equal-s42" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not history.is_file():
        time.sleep(0.1)
    assert history.is_file() and proc.poll() is None, "the cell did not start training"
    workers = [
        p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()
    ]  # noqa: E501
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    orphans = [p for p in workers if _alive(p)]
    for pid in orphans:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "a worker trains on after its sweep died"
    rows = history.read_text().count("\n")
    time.sleep(2)
    assert history.read_text().count("\n") == rows  # nothing writes into the cell any more


def _write_files(run: RunDir, files: dict[str, str]) -> None:
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)


def test_plan_cells_reads_each_cell_state_without_training(tmp_path):
    grid = Grid(datasets=["FD001"], balancers=["gaba"], seeds=[1, 2, 3, 4, 5, 6], preset="tiny")
    cells = {c.seed: RunDir(cell_dir(tmp_path, c)) for c in grid.cells()}
    _write_files(cells[1], {METRICS: json.dumps({"test": {"rmse_last": 12.5}})})
    _write_files(cells[3], {CONFIG: yaml.safe_dump({"train": {"epochs": 1}})})
    atomic_torch_save({"loop": {"epoch": 3}}, cells[3].last)
    _write_files(cells[4], {METRICS: "{not json"})
    _write_files(cells[5], {CONFIG: yaml.safe_dump({"train": {"epochs": 1}})})
    _write_files(cells[6], {LAST: "not a checkpoint"})  # and no config.yaml to resume with
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    plans = plan_cells(grid, tmp_path)

    assert [p.cell for p in plans] == grid.cells()
    assert [p.path for p in plans] == [c.path for c in cells.values()]
    got = [(p.inspection.status, p.action) for p in plans]
    assert got == [
        (CellState.DONE, None),
        (CellState.MISSING, "train"),
        (CellState.INTERRUPTED, "resume"),
        (CellState.CORRUPT, "rerun"),
        (CellState.INCOMPLETE, "rerun"),
        (CellState.CORRUPT, "rerun"),
    ]
    assert plans[0].inspection.metrics == {"test": {"rmse_last": 12.5}} and plans[0].note is None
    assert plans[1].note is None
    assert plans[2].note == f"FD001-gaba-s3: interrupted ({LAST} after epoch 3); resuming"
    assert plans[4].note == (
        f"FD001-gaba-s5: incomplete (no {METRICS} and no {LAST}); wiping and re-running"
    )
    assert plans[5].note == (
        f"FD001-gaba-s6: corrupt ({CONFIG} missing or unreadable); wiping and re-running"
    )
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no writes


def test_cell_states_print_as_their_values():
    assert [str(s) for s in CellState] == [s.value for s in CellState]
    assert f"{CellState.DONE}|{CellState.PENDING:>8}" == "done| pending"
    assert json.dumps({"status": CellState.FAILED}) == '{"status": "failed"}'


def test_a_restart_whose_preset_values_moved_is_refused_before_training(tmp_path):
    """Finished cells keep the values they were trained with; a preset edited since (or a
    changed GRACE default) would mix two recipes in one table, so it is refused, --extend or
    not, naming the keys. A sweep.yaml from before settings were recorded gets them."""
    sweep = tmp_path / "s"
    grid = sweep_module._requested_grid(["FD001"], ["gaba"], [1], "tiny", TRAIN, None)
    (sweep / "runs").mkdir(parents=True)
    old = grid.to_dict()
    old["settings"]["train"]["lr"] = 0.5
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(old))
    for extend in (False, True):
        with pytest.raises(GraceError, match=r"preset 'tiny' differ.*\(train\.lr; the preset or"):
            run_sweep(sweep, ["FD001"], ["gaba"], [1, 2], preset="tiny", overrides=TRAIN,
                      extend=extend, progress=False)  # fmt: skip
    assert not any((sweep / "runs").iterdir())
    del old["settings"]
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(old))
    merged = sweep_module._merge_with_disk(sweep, grid, read_grid(sweep), extend=False)
    assert merged.settings == grid.settings
