"""``grace sweep --vary`` (extra grid axes) and ``grace table --baseline`` (paired
differences with a t-interval and the Wilcoxon signed-rank p), on hand-made sweeps:
nothing here trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from grace_rul.errors import GraceError
from grace_rul.experiments.grid import Grid, read_grid
from grace_rul.experiments.significance import (
    compare,
    format_comparison,
    paired_stats,
    smallest_wilcoxon_p,
)
from grace_rul.experiments.summary import collect_results, summarise
from grace_rul.experiments.sweep import cell_overrides, check_vary, parse_vary, run_sweep

GRID = dict(datasets=["FD001"], balancers=["gaba"], seeds=[42], preset="tiny")


def _cli(argv: list[str]) -> int:
    from grace_rul.cli import main

    return main(argv)


# ---- --vary: parsing, validation, grid expansion, cell names


def test_parse_vary_values_like_set_and_lists_in_brackets():
    vary = parse_vary(["train.ema_decay=0,0.999", "balancer.options.weights=[1, 0],[0.5,0.5]"])
    assert vary == {"train.ema_decay": [0, 0.999], "balancer.options.weights": [[1, 0], [0.5, 0.5]]}
    assert parse_vary(["train.deterministic=true,false"]) == {"train.deterministic": [True, False]}


@pytest.mark.parametrize(
    "texts, words",
    [
        (["train.clip"], "expects KEY=V1,V2"),
        (["train.clip="], "expects KEY=V1,V2"),
        (["train.clip=0,,1"], "an empty value"),
        (["train.clip=[0,1"], "cannot parse the value"),
        (["train.clip=1,1.0"], "lists a value twice"),
        (["train.clip=0", "train.clip=1"], "given twice"),
    ],
)
def test_parse_vary_refuses_bad_text(texts, words):
    with pytest.raises(GraceError, match=words):
        parse_vary(texts)


@pytest.mark.parametrize(
    "vary, overrides, words",
    [
        (
            {"train.clipp": [0, 1]},
            {},
            r"unknown config key 'train.clipp' \(did you mean: train.clip",
        ),
        ({"train.clip": [1, -1]}, {}, r"--vary train.clip=-1: invalid setting: train.clip"),
        ({"train.ema_decay": [0, 1.5]}, {}, "train.ema_decay must be in"),
        ({"train.epochs": ["many"]}, {}, "invalid value 'many'"),
        ({"seed": [1, 2]}, {}, "sweep axis already"),
        ({"train.clip": [0, 1]}, {"train": {"clip": 2.0}}, "also set by --set"),
    ],
)
def test_bad_vary_is_one_line_before_any_cell(tmp_path, vary, overrides, words):
    with pytest.raises(GraceError, match=words) as err:
        run_sweep(tmp_path / "s", **GRID, overrides=overrides, vary=vary, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_bad_vary_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    argv = ["sweep", "--datasets", "FD001", "--balancers", "gaba", "--seeds", "1"]
    assert _cli([*argv, "--vary", "train.clipp=0,1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean: train.clip" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_vary_expands_the_grid_and_names_cells_by_their_values():
    vary = check_vary(
        {"train.ema_decay": [0, 0.999], "train.clip": [0, 1]}, "tiny", {"train": {"epochs": 1}}
    )
    assert vary == {"train.ema_decay": [0.0, 0.999], "train.clip": [0.0, 1.0]}  # coerced
    grid = Grid(["FD002"], ["gaba", "equal"], [42, 7], preset="tiny", vary=vary)
    cells = grid.cells()
    assert len(cells) == 1 * 2 * 2 * 2 * 2
    names = [c.name for c in cells]
    assert names[:4] == [
        "FD002-gaba-s42-ema_decay=0-clip=0",
        "FD002-gaba-s7-ema_decay=0-clip=0",
        "FD002-gaba-s42-ema_decay=0-clip=1",
        "FD002-gaba-s7-ema_decay=0-clip=1",
    ]
    assert "FD002-equal-s7-ema_decay=0.999-clip=1" in names and len(set(names)) == len(names)
    o = cell_overrides(grid, cells[2])
    assert o["train"] == {"ema_decay": 0.0, "clip": 1.0} and o["seed"] == 42
    # lists and option keys name cells safely; equal trailing names use longer keys
    g2 = Grid(["FD001"], ["fixed"], [1], preset="tiny",
              vary={"balancer.options.weights": [[1, 0]], "model.dropout": [0.1]})  # fmt: skip
    assert g2.cells()[0].name == "FD001-fixed-s1-weights=1_0-dropout=0.1"
    g3 = Grid(["FD001"], ["gaba"], [1], preset="tiny",
              vary={"train.lr": [0.001], "balancer.options.lr": [0.5]})  # fmt: skip
    assert g3.cells()[0].name == "FD001-gaba-s1-train.lr=0.001-options.lr=0.5"


def _fake_sweep(sweep: Path, vary: dict, results: dict[str, float]) -> None:
    (sweep / "runs").mkdir(parents=True)
    grid = {"datasets": ["FD002"], "balancers": ["gaba"], "seeds": [1, 2, 3], "preset": "tiny",
            "overrides": {}, "protocol": "val", "vary": vary}  # fmt: skip
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(grid))
    for name, rmse in results.items():
        d = sweep / "runs" / name
        d.mkdir()
        test = {"rmse_last": rmse, "nasa_score": 10 * rmse, "mae": 1.0, "health_accuracy": 0.5}
        (d / "metrics.json").write_text(json.dumps({"protocol": "val", "test": test}))


def test_vary_tables_have_a_row_per_combination(tmp_path):
    sweep = tmp_path / "s"
    res = {f"FD002-gaba-s{s}-clip={c}": 20.0 + s + (c == 0) for s in (1, 2, 3) for c in (0, 1)}
    _fake_sweep(sweep, {"train.clip": [0.0, 1.0]}, res)
    assert read_grid(sweep).vary == {"train.clip": [0.0, 1.0]}
    df = collect_results(sweep)
    assert set(df["variant"]) == {"clip=0", "clip=1"} and set(df["clip"]) == {0.0, 1.0}
    assert (df["status"] == "done").all()
    summary = summarise(df)
    assert summary.balancers == ["gaba clip=0", "gaba clip=1"]
    md = summary.to_markdown()
    assert "| gaba clip=0 | 23.00 ± 1.00 (n=3) |" in md
    assert "| gaba clip=1 | **22.00 ± 1.00 (n=3)** |" in md


# ---- --baseline: paired differences against scipy


def test_paired_stats_match_scipy_on_hand_made_pairs():
    a = np.array([16.2, 17.1, 15.8, 16.9, 17.4, 16.0])
    b = np.array([16.9, 17.0, 16.5, 17.3, 17.2, 16.8])
    d = a - b
    st = paired_stats(d)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert st.n == 6 and st.mean == pytest.approx(d.mean())
    assert (st.ci_low, st.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert st.p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert st.p == pytest.approx(stats.wilcoxon(d).pvalue)
    # all six differences of one sign: the exact two-sided p is 2/2^6
    assert paired_stats([-1.0, -2, -3, -4, -5, -6]).p == pytest.approx(0.03125)
    assert paired_stats([-1.0, -2, -3, -4, -5, -6]).significant


def test_five_seeds_can_never_reach_005():
    assert smallest_wilcoxon_p(5) == 0.0625
    best = paired_stats([-1.0, -2.0, -3.0, -4.0, -5.0])  # as extreme as 5 pairs get
    assert best.p == pytest.approx(stats.wilcoxon([-1, -2, -3, -4, -5]).pvalue) == 0.0625
    assert not best.significant


def test_fewer_than_two_pairs_is_na_with_a_reason():
    assert paired_stats([0.4]).note == "fewer than 2 paired seeds (n=1)"
    assert math.isnan(paired_stats([]).p)
    zero = paired_stats([0.0, 0.0, 0.0])
    assert zero.mean == 0.0 and math.isnan(zero.p) and "all paired differences are 0" in zero.note


def _fake_balancer_sweep(sweep: Path) -> None:
    (sweep / "runs").mkdir(parents=True)
    seeds = [1, 2, 3, 4, 5, 6]
    grid = {"datasets": ["FD001", "FD002"], "balancers": ["equal", "gaba", "lone"],
            "seeds": seeds, "preset": "tiny", "overrides": {}, "protocol": "val"}  # fmt: skip
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(grid))
    gen = np.random.default_rng(0)
    for d in ("FD001", "FD002"):
        for s in seeds:
            base = 20.0 + gen.normal()
            values = {"equal": base, "gaba": base - 1.0 - 0.1 * s, "lone": base + 0.5}
            for b, rmse in values.items():
                if b == "lone" and s > 1:
                    continue  # one seed only
                if b == "gaba" and d == "FD002":
                    rmse = base + (0.3 if s % 2 else -0.3)  # no effect
                p = sweep / "runs" / f"{d}-{b}-s{s}"
                p.mkdir()
                test = {"rmse_last": rmse, "nasa_score": 10 * rmse, "mae": 1.0,
                        "health_accuracy": 0.5}  # fmt: skip
                (p / "metrics.json").write_text(json.dumps({"protocol": "val", "test": test}))


def test_table_baseline_markdown_bold_only_significant_and_na_footnote(tmp_path, capsys):
    sweep = tmp_path / "s"
    _fake_balancer_sweep(sweep)
    df = collect_results(sweep, write=False)
    table = compare(df, "equal").set_index(["metric", "method", "dataset"])
    row = table.loc[("rmse_last", "gaba", "FD001")]
    diffs = np.array([-1.0 - 0.1 * s for s in range(1, 7)])
    assert row["n"] == 6 and row["mean_diff"] == pytest.approx(diffs.mean())
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue) and row["significant"]
    assert not table.loc[("rmse_last", "gaba", "FD002"), "significant"]
    assert table.loc[("rmse_last", "lone", "FD001"), "n"] == 1
    assert _cli(["table", str(sweep), "--baseline", "equal"]) == 0
    out = capsys.readouterr().out
    assert "Wilcoxon p" in out and "| gaba | **−1.35 [" in out and "| **0.0312** |" in out
    assert "| lone | n/a[^1] | n/a |" in out
    assert "[^1]: fewer than 2 paired seeds (n=1)" in out
    assert "(0.03125 for n = 6)" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("| gaba | ")]
    cells = lines[-1].split("|")  # NASA: FD001 significant, FD002 (no effect) not bold
    assert "**" in cells[2] and "**" not in cells[4] + cells[5]
    assert format_comparison(df, "equal", "csv").startswith("metric,method,baseline,dataset")


def test_table_baseline_not_in_sweep_is_one_line_listing_rows(tmp_path, capsys):
    sweep = tmp_path / "s"
    _fake_balancer_sweep(sweep)
    assert _cli(["table", str(sweep), "--baseline", "pcgrad"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert "'pcgrad' is not in the sweep (present: equal, gaba, lone)" in err


def test_baseline_by_axis_value_pairs_each_balancer_with_its_own_row(tmp_path):
    sweep = tmp_path / "s"
    res = {f"FD002-gaba-s{s}-clip={c}": 20.0 + s + (c == 0) for s in (1, 2, 3) for c in (0, 1)}
    _fake_sweep(sweep, {"train.clip": [0.0, 1.0]}, res)
    df = collect_results(sweep, write=False)
    table = compare(df, "clip=0")
    rmse = table[table["metric"] == "rmse_last"].iloc[0]
    assert rmse["method"] == "gaba clip=1" and rmse["baseline"] == "gaba clip=0"
    assert rmse["mean_diff"] == pytest.approx(-1.0) and rmse["note"] == ""
    assert compare(df, "gaba clip=0")["baseline"].eq("gaba clip=0").all()


# ---- critical-difference diagram (Demšar 2006)


def test_nemenyi_cd_matches_demsar_table_and_ranks_average_ties():
    from grace_rul.reports.figures import average_ranks, nemenyi_cd

    # Demšar (2006) Table 5a: q_0.05 = 2.569 for k = 4, 3.164 for k = 10
    assert nemenyi_cd(4, 2) == pytest.approx(2.569 * math.sqrt(4 * 5 / 12), abs=1e-3)
    assert nemenyi_cd(10, 5) == pytest.approx(3.164 * math.sqrt(10 * 11 / 30), abs=1e-3)
    means = pd.DataFrame(
        {"FD001": [1.0, 2.0, 2.0, 4.0], "FD002": [2.0, 1.0, 3.0, 4.0]}, index=list("abcd")
    )
    ranks = average_ranks(means)
    assert ranks.to_dict() == {"a": 1.5, "b": 1.75, "c": 2.75, "d": 4.0}


def test_cd_diagram_renders_for_four_methods_over_two_subsets(tmp_path):
    from grace_rul.reports.figures import Skip, cd_diagram

    sweep = tmp_path / "s"
    _fake_balancer_sweep(sweep)
    df = collect_results(sweep, write=False)
    extra = df[df["balancer"] == "equal"].assign(balancer="fourth", rmse_last=df["rmse_last"] + 2)
    stats4 = summarise(pd.concat([df, extra], ignore_index=True)).stats
    rendered = cd_diagram(stats4)
    png = rendered.png_bytes(dpi=50)
    assert png.startswith(b"\x89PNG") and rendered.name == "cd_diagram"
    assert "4 methods · 2 subsets" in rendered.subtitle
    with pytest.raises(Skip, match="needs >= 4 methods"):
        cd_diagram(summarise(df).stats)  # three methods


# ---- benchmarks/review.py: the claims grid's tables, from a tiny fake sweep


def _write_sweep(sweep: Path, balancers, seeds, vary, values) -> None:
    (sweep / "runs").mkdir(parents=True)
    grid = {"datasets": sorted({k[0] for k in values}), "balancers": balancers, "seeds": seeds,
            "preset": "tiny", "overrides": {"train": {"epochs": 1}}, "protocol": "val",
            "vary": vary}  # fmt: skip
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(grid))
    for (d, name), rmse in values.items():
        p = sweep / "runs" / f"{d}-{name}"
        p.mkdir()
        test = {"rmse_last": rmse, "nasa_score": 10 * rmse, "mae": 1.0, "health_accuracy": 0.5}
        (p / "metrics.json").write_text(json.dumps({"protocol": "val", "test": test}))


def _load_benchmark(name: str, monkeypatch):
    import importlib.util

    benchmarks = Path(__file__).parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script from there
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_review_script_writes_csvs_and_readme_tables(tmp_path, monkeypatch):
    review = _load_benchmark("review", monkeypatch)
    out, seeds = tmp_path / "runs", [1, 2]
    for d in ("FD001", "FD002"):
        vals = {(d, f"{b}-s{s}"): 20.0 + s + (b == "gaba") for b in ("equal", "gaba")
                for s in seeds}  # fmt: skip
        if d == "FD002":
            del vals[(d, "gaba-s2")]  # an unfinished cell: one paired seed
        _write_sweep(out / f"balancers-{d}", ["equal", "gaba"], seeds, {}, vals)
        single = {(d, f"fixed-s{s}"): 19.0 + s for s in seeds}
        _write_sweep(out / f"single-task-{d}", ["fixed"], seeds, {}, single)
    stab = {("FD002", f"gaba-s{s}-clip={c}-ema_decay={e}"): 21.0 + s - 0.5 * (c != 0)
            for s in seeds for c in (0, 1) for e in (0, 0.999)}  # fmt: skip
    _write_sweep(out / "stabilisers", ["gaba"], seeds,
                 {"train.clip": [0.0, 1.0], "train.ema_decay": [0.0, 0.999]}, stab)  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- review-balancers:start -->\nSTALE\n<!-- review-balancers:end -->\n"
        "mid\n<!-- review-stabilisers:start -->\n<!-- review-stabilisers:end -->\nend\n"
    )
    review.tables(out, "tiny", results=tmp_path / "results", readme=readme)
    rows = list(pd.read_csv(tmp_path / "results" / "balancers.csv").itertuples())
    gaba = [r for r in rows if r.method == "gaba" and r.subset == "FD001"][0]
    assert gaba.n == 2 and gaba.d_rmse == pytest.approx(1.0) and gaba.baseline == "equal"
    assert {r.method for r in rows} == {"equal", "gaba", review.SINGLE_TASK}
    stab_rows = pd.read_csv(tmp_path / "results" / "stabilisers.csv")
    on = stab_rows[stab_rows["method"] == "clip=1 ema_decay=0.999"].iloc[0]
    assert on["baseline"] == "clip=0 ema_decay=0" and on["d_rmse"] == pytest.approx(-0.5)
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| gaba | 22.50 ± 0.71 (n=2) | +1.00 [+1.00, +1.00] | 0.5 |" in text
    assert "| clip=0 ema_decay=0 | 22.50 ± 0.71 (n=2) | baseline |  |" in text
    assert "Wilcoxon p" in text and "smallest two-sided Wilcoxon p" in text
    assert "epochs per run: FD001 1, FD002 1;" in text
    assert "| 22.00 (n=1) | n/a[^1] | n/a |" in text  # gaba on FD002
    assert "\n[^1]: fewer than 2 paired seeds (n=1)\n" in text


def test_review_budget_follows_the_accuracy_runs(tmp_path, monkeypatch):
    review = _load_benchmark("review", monkeypatch)
    assert sum(n for _, _, n in review.plan("small")) == 150
    # no accuracy runs of the preset: one epoch count from the constants, within the budget
    none = tmp_path / "missing.csv"
    uniform = review.epochs_for("small", 8.0, none)
    assert len(set(uniform.values())) == 1
    e = uniform["FD001"]
    assert review.cpu_seconds("small", uniform, none) <= 8 * 3600
    assert review.cpu_seconds("small", dict.fromkeys(uniform, e + 1), none) > 8 * 3600
    # measured runs: CPU per epoch from them, epochs from their median best epoch
    acc = tmp_path / "accuracy.csv"
    pd.DataFrame(
        [
            {"kind": "single", "subset": "FD001", "preset": "small", "best_epoch": 18,
             "epochs_run": 30, "cpu_seconds": 30 * 16.0},
            {"kind": "single", "subset": "FD001", "preset": "small", "best_epoch": 14,
             "epochs_run": 20, "cpu_seconds": 20 * 16.0},
            {"kind": "single", "subset": "FD002", "preset": "small", "best_epoch": 6,
             "epochs_run": 20, "cpu_seconds": 20 * 48.0},
            {"kind": "ensemble", "subset": "FD002", "preset": "small", "best_epoch": 99,
             "epochs_run": 99, "cpu_seconds": 1.0},
        ]
    ).to_csv(acc, index=False)  # fmt: skip
    per_epoch = review.epoch_cpu_s("small", acc)
    assert per_epoch == {"FD001": pytest.approx(10.0), "FD002": pytest.approx(30.0)}
    assert review.epochs_for("small", 1000.0, acc) == {"FD001": 16, "FD002": 6}  # no scaling
    tight = review.epochs_for("small", 2.0, acc)
    assert tight["FD001"] > tight["FD002"] and tight["FD001"] < 16
    assert review.cpu_seconds("small", tight, acc) == pytest.approx(2 * 3600, rel=0.2)


def test_selection_script_pairs_the_accuracy_runs_with_select_all(tmp_path, monkeypatch):
    selection = _load_benchmark("selection", monkeypatch)
    seeds = [1, 2, 3]
    # the accuracy grid also holds FD003, which the comparison leaves out
    last = {(d, f"gaba-s{s}"): 15.0 + s for d in ("FD001", "FD002", "FD003") for s in seeds}
    _write_sweep(tmp_path / "last", ["gaba"], seeds, {}, last)
    alls = {(d, f"gaba-s{s}"): 15.0 + s + (0.5 if d == "FD001" else -s) for d in ("FD001", "FD002")
            for s in seeds}  # fmt: skip
    _write_sweep(tmp_path / "all", ["gaba"], seeds, {}, alls)
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- selection:start -->\n<!-- selection:end -->\nb\n")
    csv_path = tmp_path / "selection.csv"
    epochs = {"FD001": "up to 2", "FD002": "up to 2"}
    selection.tables(tmp_path / "last", tmp_path / "all", epochs, csv_path, readme)
    df = pd.read_csv(csv_path).set_index(["method", "subset"])
    methods = ("select=last", "select=all")
    assert set(df.index) == {(m, d) for m in methods for d in ("FD001", "FD002")}
    assert df.loc[("select=all", "FD001"), "d_rmse"] == pytest.approx(0.5)
    assert df.loc[("select=all", "FD002"), "d_rmse"] == pytest.approx(-2.0)
    assert df.loc[("select=all", "FD002"), "baseline"] == "select=last"
    text = readme.read_text()
    assert "| select=all | 17.50 ± 1.00 (n=3) | +0.50 [+0.50, +0.50] | 0.25 |" in text
    assert "epochs per run: FD001 up to 2, FD002 up to 2;" in text


def test_precision_script_pairs_its_seeds_of_the_accuracy_runs_with_bf16(tmp_path, monkeypatch):
    precision = _load_benchmark("precision", monkeypatch)
    # the accuracy grid holds more subsets and seeds than the comparison's FD001 x 42 123 456
    fp32 = {(d, f"gaba-s{s}"): 15.0 + s / 1000 for d in ("FD001", "FD002")
            for s in (42, 123, 456, 789)}  # fmt: skip
    _write_sweep(tmp_path / "fp32", ["gaba"], [42, 123, 456, 789], {}, fp32)
    bf16 = {("FD001", f"gaba-s{s}"): 15.0 + s / 1000 + d for s, d in ((42, 0.1), (123, -0.3),
            (456, 0.2))}  # fmt: skip
    _write_sweep(tmp_path / "bf16", ["gaba"], [42, 123, 456], {}, bf16)
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- precision:start -->\n<!-- precision:end -->\nb\n")
    csv_path = tmp_path / "precision.csv"
    precision.tables(tmp_path / "fp32", tmp_path / "bf16", {"FD001": "up to 2"}, csv_path, readme)
    df = pd.read_csv(csv_path).set_index(["method", "subset"])
    assert set(df.index) == {("fp32", "FD001"), ("bf16 autocast", "FD001")}
    assert df.loc[("fp32", "FD001"), "n"] == 3  # seed 789 and FD002 left out
    assert df.loc[("bf16 autocast", "FD001"), "d_rmse"] == pytest.approx(0.0)
    assert df.loc[("bf16 autocast", "FD001"), "baseline"] == "fp32"
    text = readme.read_text()
    assert "| bf16 autocast |" in text and "seeds 42 123 456;" in text


def test_patience_replay_finds_where_a_run_would_stop(tmp_path, monkeypatch):
    patience = _load_benchmark("patience", monkeypatch)
    flags = [1, 1, 0, 0, 1, 0, 0, 0, 0]  # bests at epochs 1, 2 and 5
    assert patience.replay(flags, 2) == (4, 2)  # stops after epoch 4, before the epoch-5 best
    assert patience.replay(flags, 3) == (8, 5)
    assert patience.replay(flags, 10) == (9, 5)  # never stops early: the whole history
    run = tmp_path / "sweep" / "runs" / "FD001-gaba-s1"
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": range(1, 10), "is_best": flags}).to_csv(run / "history.csv")
    (run / "metrics.json").write_text("{}")
    unfinished = tmp_path / "sweep" / "runs" / "FD001-gaba-s2"
    unfinished.mkdir()
    pd.DataFrame({"epoch": [1], "is_best": [1]}).to_csv(unfinished / "history.csv")
    histories = patience.finished_histories([tmp_path / "sweep"])
    assert list(histories.values()) == [flags]
    rows = {r["patience"]: r for r in patience.rows(histories, [2, 3])}
    assert rows[2]["same_selected_epoch"] == 0 and rows[3]["same_selected_epoch"] == 1
    assert rows[3]["epochs_run"] == 8 and rows[3]["epochs_saved_pct"] == pytest.approx(11.1)


def test_accuracy_table_pairs_recipes_with_the_old_default_by_seed(monkeypatch):
    accuracy = _load_benchmark("accuracy", monkeypatch)

    def row(recipe, kind, seed, rmse):
        r = dict.fromkeys(accuracy.COLUMNS, "")
        r.update(recipe=recipe, kind=kind, subset="FD001", seed=str(seed), rmse_last=str(rmse))
        r.update(nasa_score="300", mae="10", health_accuracy="0.8", coverage_80="0.8",
                 width_80="30", coverage_90="0.9", width_90="40", epochs_run="20",
                 best_epoch="12", cpu_seconds="600")  # fmt: skip
        return r

    base = {42: 16.0, 123: 15.0, 456: 17.0}
    rows = [row("bilstm", "single", s, v) for s, v in base.items()]
    rows += [row("default", "single", s, v - d) for (s, v), d in zip(base.items(), (3, 2, 4))]
    rows += [row("default", "single", 999, 1.0)]  # no baseline run for this seed: unpaired
    rows += [row("default-5fold", "folds", s, v - 4) for s, v in base.items()]
    for r in rows[3:6]:
        r["cpu"] = "Test CPU (AMX)"  # the CPU that timed it, named in the CPU-time cell
    text = accuracy.table(rows)
    lines = {line.split(" | ")[1]: line for line in text.splitlines() if "| FD001 |" in line}
    # the paired mean over the 3 shared seeds: -(3 + 2 + 4) / 3; seed 999 is left out
    assert "| -3.00 [" in lines["`default`"] and "(n=3)" in lines["`default`"]
    assert "| 10.00 ± 6.00 (n=4) |" in lines["`default`"]
    assert lines["`default`"].endswith("| 10.0 (AMX) |") and lines["`bilstm`"].endswith("| 10.0 |")
    assert "| ≤ 12.0 |" in lines["`default-5fold` (5-fold ensemble)"]
    assert "| -4.00 [-4.00, -4.00], p=0.250 (n=3) |" in lines["`default-5fold` (5-fold ensemble)"]
    assert "| FD002 | `default` | — |" in text  # the default's rows stand even before runs
    assert "| 11.50 | 16.14 | 11.35 | 20.00 |" in text  # the quoted anchors
    assert "`default-5fold` = the default, 5-fold ensemble (preset `default`, data.folds=5)" in text


def test_accuracy_csv_keeps_committed_rows_a_new_sweep_does_not_replace(tmp_path, monkeypatch):
    accuracy = _load_benchmark("accuracy", monkeypatch)
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path / "accuracy.csv")

    def row(recipe, subset, seed, rmse):
        return {**dict.fromkeys(accuracy.COLUMNS, ""), "recipe": recipe, "kind": "single",
                "subset": subset, "seed": str(seed), "rmse_last": str(rmse)}  # fmt: skip

    committed = [row("default", "FD001", 42, 12.0), row("default", "FD003", 42, 13.0),
                 row("bilstm", "FD003", 42, 15.0)]  # fmt: skip
    accuracy.write_rows(accuracy.RESULTS, accuracy.COLUMNS, committed)
    # a later session trains FD003 again (and FD002) in a fresh sweep; FD001's runs are gone
    merged = accuracy.merged_rows(
        [row("default", "FD003", 42, 12.5), row("default", "FD002", 42, 14)]
    )
    got = {(r["recipe"], r["subset"]): r["rmse_last"] for r in merged}
    assert got == {("default", "FD001"): "12.0", ("default", "FD003"): "12.5",
                   ("bilstm", "FD003"): "15.0", ("default", "FD002"): "14"}  # fmt: skip
    assert len(merged) == 4


def test_accuracy_builds_a_seed_ensemble_only_from_all_five_seeds(tmp_path, monkeypatch):
    accuracy = _load_benchmark("accuracy", monkeypatch)
    built = []

    class Finished:  # every run of the grid has finished; the ensemble's metrics are read back
        def __init__(self, path):
            self.path = path

        def is_finished(self):
            return True

        def read_metrics(self):
            return {"test": {"rmse_last": 12.0}}

    monkeypatch.setattr(accuracy, "RunDir", Finished)
    monkeypatch.setattr(accuracy, "build_ensemble", lambda runs, out: built.append(len(runs)))
    part = Grid(datasets=["FD001"], balancers=["gaba"], seeds=[42, 123], preset="default")
    assert accuracy.ensemble_rows("default", tmp_path, part) == [] and built == []
    full = Grid(datasets=["FD001"], balancers=["gaba"], seeds=accuracy.SEEDS, preset="default")
    (row,) = accuracy.ensemble_rows("default", tmp_path, full)
    assert built == [5] and row["seed"] == "42+123+456+789+1024" and row["kind"] == "ensemble"


def test_confirm_jobs_are_pinned_cv_runs_and_committed_rows_stand(tmp_path, monkeypatch):
    confirm = _load_benchmark("confirm", monkeypatch)
    monkeypatch.setattr(confirm, "RESULTS", tmp_path / "confirm.csv")
    doc = {"candidates": {"a": {"preset": "tiny", "data": {"window": 10}}, "b": {"preset": "tiny"}},
           "plan": [{"candidate": "a", "dataset": "FD001", "seeds": [1, 2]},
                    {"candidate": "b", "dataset": "FD001", "seeds": [1]}]}  # fmt: skip
    assert confirm.jobs(doc) == [("a", "FD001", 1), ("a", "FD001", 2), ("b", "FD001", 1)]
    cfg = confirm.job_config(doc, "a", "FD001", 2)
    assert (cfg.seed, cfg.data.folds, cfg.data.window) == (2, confirm.FOLDS, 10)
    assert cfg.train.precision == "32"  # whichever CPU trains it
    # job a/1 committed by an earlier session; a/2 finished here; b/1 not run yet
    committed = {**dict.fromkeys(confirm.COLUMNS, ""), "candidate": "a", "dataset": "FD001",
                 "seed": "1", "cv_rmse": "12.0", "cpu_seconds_per_model": "700"}  # fmt: skip
    confirm.write_rows(confirm.RESULTS, confirm.COLUMNS, [committed])
    run = confirm.job_dir(tmp_path / "runs", "a", "FD001", 2)
    run.mkdir(parents=True)
    metrics = {"cv": {"rmse": 13.0, "std": 0.5, "fold_rmse": [12.5, 13.0, 13.5]},
               "cpu_seconds_per_model": 800.0, "cpu": "Test CPU (AVX2)"}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = confirm.collect(doc, tmp_path / "runs")
    assert [(r["seed"], float(r["cv_rmse"])) for r in rows] == [("1", 12.0), (2, 13.0)]
    assert rows[1]["fold_rmse"] == "12.500 13.000 13.500" and rows[1]["cpu"] == "Test CPU (AVX2)"
    text = confirm.table(rows)
    assert "| `a` | FD001 | 12.00 (seed 1), 13.00 (seed 2) | 12.50 ± 0.71 (n=2) | 750 |" in text
    assert "`b`" not in text  # no row, no line


def test_search_table_lists_finished_trials_best_first(tmp_path, monkeypatch):
    search = _load_benchmark("search", monkeypatch)
    params = {"model.arch": "dcnn", "data.window": 30, "data.window_features": True,
              "data.scaling": "minmax", "train.schedule": "plateau", "train.swa_start": 15,
              "train.clip": 1.0, "train.lr": 4.69e-4, "train.weight_decay": 3.6e-5,
              "train.batch_size": 128, "model.dropout": 0.0246}  # fmt: skip
    trials = []
    for number, state, rmse in ((0, "COMPLETE", 14.7), (1, "COMPLETE", 12.1), (2, "RUNNING", None)):
        trials.append({"number": number, "state": state, "values_0": rmse, "values_1": 700.0,
                       "user_attrs_cv_std": 0.4,
                       **{f"params_{k}": v for k, v in params.items()}})  # fmt: skip
    trials.append({"number": 3, "state": "WAITING"})  # queued: no values, so float columns
    pd.DataFrame(trials).to_csv(tmp_path / "trials.csv", index=False)
    text = search.table(tmp_path / "trials.csv")
    body = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0] for line in body] == ["| 1", "| 0"]  # best CV score first
    assert "| dcnn | 30 | True | minmax | plateau | 15 | 1.0 | 0.00047 | 3.6e-05 | 128 |" in body[0]
    assert body[0].endswith("| 12.10 (0.40) | 700 |")
    assert text.rstrip().endswith("Trials: 2 complete, 1 running, 1 waiting.")
    (tmp_path / "importance.csv").write_text("param,importance\ntrain.lr,0.25\nmodel.arch,0.75\n")
    assert "fANOVA" not in search.table(tmp_path / "trials.csv")  # 2 trials: not shown
    monkeypatch.setattr(search, "MIN_IMPORTANCE_TRIALS", 2)
    text = search.table(tmp_path / "trials.csv")
    assert (
        "over the 2 finished trials; rough with this few): `model.arch` 0.75, `train.lr` 0.25."
        in text
    )


def test_search_warm_starts_fd002_from_fd001s_best_trial(tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    search = _load_benchmark("search", monkeypatch)
    monkeypatch.setattr(search, "ROOT", tmp_path)
    src = search.spec("FD001", 1)
    Path(src.out).mkdir(parents=True)
    study = optuna.create_study(study_name="tune-fd001", storage=src.storage,
                                directions=["minimize", "minimize"])  # fmt: skip
    archs = optuna.distributions.CategoricalDistribution(["dcnn", "tcn", "transformer"])
    for rmse, arch in ((14.0, "tcn"), (12.0, "dcnn"), (13.0, "transformer")):
        study.add_trial(optuna.trial.create_trial(
            params={"model.arch": arch}, distributions={"model.arch": archs},
            values=[rmse, 100.0]))  # fmt: skip
    assert search.warm_start("FD002") == 1  # the lowest CV RMSE, not the Pareto front's first
    target = optuna.load_study(study_name="tune-fd002", storage=search.spec("FD002", 1).storage)
    [queued] = target.trials
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == {"model.arch": "dcnn"}
    assert queued.user_attrs["warm_start"] == "FD001 trial 1"
    assert search.warm_start("FD002") is None  # a study with trials is left alone
    assert search.warm_start("FD001") is None


def test_default_time_script_times_a_real_run_and_marks_the_limit(tmp_path, monkeypatch):
    timing = _load_benchmark("default_time", monkeypatch)
    row = timing.measure("FD001", tmp_path / "FD001", preset="tiny")
    assert row["epochs_run"] == 2 and row["threads"] == 2 and row["precision"] == "32"
    assert 0 < row["train_seconds"] <= row["wall_seconds"] and row["cpu_seconds"] > 0
    assert row["limit_minutes"] == 10 and row["test_rmse_last"] > 0
    assert "--preset tiny" in row["command"] and "--out" not in row["command"]
    # a committed row of the same subset, CPU and commit is replaced; another CPU's is kept
    old = tmp_path / "old.csv"
    other = {**row, "cpu": "Other CPU (AVX2)", "wall_seconds": 26 * 60}
    timing.write_rows(old, timing.COLUMNS, [{**row, "wall_seconds": 1.0}, other])
    merged = timing.merge([row], old)
    assert [r["cpu"] for r in merged] == ["Other CPU (AVX2)", row["cpu"]]
    text = timing.table(merged)
    assert f"| FD001 | `tiny` | {timing._minutes(row['wall_seconds'])} | 10 min | yes |" in text
    assert "| FD001 | `tiny` | 26 min 00 s | 10 min | **no** |" in text
