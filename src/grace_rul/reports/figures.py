"""The report's matplotlib figures, one function per figure.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot), so
they need no display, leave no global state behind and render with the Agg
canvas. Every builder returns a :class:`Rendered` or raises :class:`Skip` with
the reason (missing file, missing column, nothing to plot), which the page shows
as a note instead of the figure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from grace_rul.inference.contract import HEALTH_CLASSES
from grace_rul.reports.loading import RunData, finite
from grace_rul.rundir import (
    GRAD_NORMS,
    GRAD_STATS,
    HISTORY,
    METRICS,
    PREDICTIONS,
    TRAJECTORIES,
)

TITLE_CURVES = "Training and validation curves"
TITLE_WEIGHTS = "Task weights λ per epoch"
TITLE_WEIGHTS_SWEEP = "Task weights λ per epoch (seed mean)"
TITLE_GRAD_NORMS = "Gradient-norm histogram"
TITLE_PREDICTIONS = "Predicted vs true RUL per test unit"
TITLE_TRAJECTORIES = "RUL trajectories over engine life"
TITLE_CONFUSION = "Health-state confusion matrix"
TITLE_BOX_RMSE = "Test RMSE per balancer and subset"
TITLE_BOX_NASA = "Test NASA score per balancer and subset"

_TASK_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


class Skip(Exception):
    """A figure that cannot be drawn from the files present; the message says why."""


@dataclass
class Rendered:
    """A drawn figure: its file stem, its title (also the HTML caption) and a subtitle."""

    name: str
    title: str
    subtitle: str
    figure: Figure

    def png_bytes(self, dpi: int = 110) -> bytes:
        FigureCanvasAgg(self.figure)  # attach the Agg canvas: headless, no pyplot
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _title(fig: Figure, title: str, subtitle: str) -> None:
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=11)


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df.columns else pd.Series(dtype=float)


def _best_epoch(run: RunData, hist: pd.DataFrame) -> float | None:
    best = finite(run.metrics.get("best_epoch"))
    if best is not None:
        return best
    if "is_best" in hist.columns:
        flagged = hist.loc[_numeric(hist, "is_best") == 1, "epoch"]
        if len(flagged):
            return float(flagged.iloc[-1])
    return None


def _wide_range(values: pd.Series | np.ndarray, ratio: float = 50.0) -> bool:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return v.size > 1 and v.max() / v.min() > ratio


# ---------------------------------------------------------------- single run


def training_curves(run: RunData) -> Rendered:
    """Train loss (with LR on a twin axis) and validation RMSE per epoch, best epoch marked."""
    hist = run.history
    if hist is None:
        raise Skip(run.why_missing(HISTORY))
    epoch = _numeric(hist, "epoch")
    loss = _numeric(hist, "train_loss")
    val = _numeric(hist, "val_rmse")
    if not np.isfinite(epoch).any():
        raise Skip(f"{HISTORY} has no epochs")
    best = _best_epoch(run, hist)

    fig = _figure(8.0, 6.2)
    ax_loss, ax_rmse = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(epoch, loss, color="tab:blue", marker=".", label="train loss")
    if _wide_range(loss):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss (balanced sum)")
    handles = ax_loss.get_lines()[:]
    if "lr" in hist.columns and np.isfinite(_numeric(hist, "lr")).any():
        ax_lr = ax_loss.twinx()
        lr = _numeric(hist, "lr")
        handles += ax_lr.plot(
            epoch,
            lr,
            color="tab:gray",
            linestyle="--",
            drawstyle="steps-mid",
            label="learning rate",
        )
        if _wide_range(lr, 20.0):
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
    ax_rmse.plot(epoch, val, color="tab:green", marker=".", label="validation RMSE")
    test = _numeric(hist, "test_rmse")
    if np.isfinite(test).any():
        ax_rmse.plot(
            epoch, test, color="tab:red", marker=".", alpha=0.8, label="test RMSE (per epoch)"
        )
    ax_rmse.set_ylabel("RMSE (cycles)")
    ax_rmse.set_xlabel("epoch")
    ax_rmse.xaxis.set_major_locator(MaxNLocator(integer=True))
    subtitle = f"{run.dataset} · {run.balancer} · seed {run.seed}"
    if best is not None:
        for ax in (ax_loss, ax_rmse):
            ax.axvline(best, color="black", linestyle=":", linewidth=1.2)
        at_best = val[epoch == best]
        if len(at_best) and np.isfinite(at_best.iloc[0]):
            ax_rmse.scatter(
                [best], [at_best.iloc[0]], s=80, facecolors="none", edgecolors="black", zorder=5
            )
        ax_rmse.plot([], [], color="black", linestyle=":", label=f"best epoch ({best:g})")
        subtitle += f" · best epoch {best:g}"
    ax_loss.legend(handles=handles, loc="upper right", fontsize=8)
    ax_rmse.legend(loc="upper right", fontsize=8)
    for ax in (ax_loss, ax_rmse):
        ax.grid(alpha=0.3)
    _title(fig, TITLE_CURVES, subtitle)
    return Rendered("training_curves", TITLE_CURVES, subtitle, fig)


def _weight_tasks(df: pd.DataFrame) -> list[str]:
    return [c[2:] for c in df.columns if c.startswith("w_")]


def task_weights(run: RunData) -> Rendered:
    """Applied, raw and smoothed task weights λ per epoch from gradient_stats.csv."""
    gs = run.grad_stats
    if gs is None:
        raise Skip(run.why_missing(GRAD_STATS))
    tasks = _weight_tasks(gs)
    if not tasks:
        raise Skip(f"{GRAD_STATS} has no w_* columns")
    epoch = _numeric(gs, "epoch")
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    drawn = 0
    for i, task in enumerate(tasks):
        colour = _TASK_COLOURS[i % len(_TASK_COLOURS)]
        for prefix, style, label in (
            ("w_", "-", "applied"),
            ("raw_w_", ":", "raw"),
            ("smooth_w_", "--", "smoothed"),
        ):
            y = _numeric(gs, prefix + task)
            if not np.isfinite(y).any():
                continue
            ax.plot(
                epoch,
                y,
                color=colour,
                linestyle=style,
                linewidth=2.0 if prefix == "w_" else 1.3,
                alpha=1.0 if prefix == "w_" else 0.8,
                label=f"λ {task} ({label})",
            )
            drawn += 1
    if not drawn:
        raise Skip(f"{GRAD_STATS} has no finite task weights")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("task weight λ (epoch mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    subtitle = f"{run.dataset} · balancer {run.balancer} · seed {run.seed}"
    _title(fig, TITLE_WEIGHTS, subtitle)
    return Rendered("task_weights", TITLE_WEIGHTS, subtitle, fig)


def _clip_info(run: RunData, norms: np.ndarray) -> tuple[float | None, float | None, str]:
    """(threshold, clipped fraction, note) for the histogram."""
    mode = (run.config or {}).get("train", {}).get("clip_mode") if run.config else None
    gs = run.grad_stats
    threshold, constant = None, True
    if gs is not None and "clip_threshold" in gs.columns:
        t = _numeric(gs, "clip_threshold").dropna()
        t = t[np.isfinite(t)]
        if len(t):
            threshold, constant = float(t.iloc[-1]), bool(t.nunique() == 1)
    if threshold is None and run.config:
        threshold = finite(run.config.get("train", {}).get("clip"))
    if threshold is not None and threshold <= 0:
        return None, None, "clipping disabled"
    if mode == "value":
        return None, None, f"value clipping at ±{threshold:g} per element (no norm threshold)"
    if threshold is not None and constant:
        # The histogram's own data: exactly the share of plotted steps right of the line.
        return threshold, float(np.mean(norms > threshold)), ""
    fraction = None
    if gs is not None and "clip_fraction" in gs.columns:
        frac = _numeric(gs, "clip_fraction")
        steps = _numeric(gs, "steps") if "steps" in gs.columns else pd.Series(1.0, index=gs.index)
        ok = np.isfinite(frac) & np.isfinite(steps) & (steps > 0)
        if ok.any():
            fraction = float((frac[ok] * steps[ok]).sum() / steps[ok].sum())
    return threshold, fraction, "threshold changed during training: line at the last value"


def grad_norm_histogram(run: RunData) -> Rendered:
    """Histogram of every step's pre-clip joint gradient norm with the clip threshold."""
    if run.grad_norms is None:
        raise Skip(run.why_missing(GRAD_NORMS))
    raw = run.grad_norms
    norms = raw[np.isfinite(raw)]
    if norms.size == 0:
        raise Skip(f"{GRAD_NORMS} holds no finite gradient norms")
    threshold, fraction, note = _clip_info(run, norms)

    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    # Log bins when norms (and the threshold line) span orders of magnitude, so the
    # line and the bulk of the histogram are both visible.
    span = np.append(norms, threshold) if threshold is not None else norms
    if _wide_range(span, 100.0) and (span > 0).all():
        bins = np.geomspace(span.min(), span.max(), 50)
        ax.set_xscale("log")
    else:
        bins = 50
    ax.hist(norms, bins=bins, color="tab:blue", alpha=0.8, label=f"{norms.size} steps")
    parts = [f"{norms.size} steps", f"median {np.median(norms):.3g}"]
    if threshold is not None:
        label = f"clip threshold {threshold:g}"
        if fraction is not None:
            label += f" ({100 * fraction:.1f}% of steps clipped)"
            parts.append(f"{100 * fraction:.1f}% clipped at {threshold:g}")
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1.5, label=label)
    if note:
        parts.append(note)
    if norms.size < raw.size:
        parts.append(f"{raw.size - norms.size} non-finite")
    ax.set_xlabel("pre-clip joint gradient L2 norm (per step)")
    ax.set_ylabel("steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    subtitle = " · ".join(parts)
    _title(fig, TITLE_GRAD_NORMS, subtitle)
    return Rendered("grad_norms", TITLE_GRAD_NORMS, subtitle, fig)


def predictions_plot(run: RunData) -> Rendered:
    """Predicted and true last-window RUL of every test unit, units sorted by true RUL."""
    pred = run.predictions
    if pred is None:
        raise Skip(run.why_missing(PREDICTIONS))
    df = pd.DataFrame({"true": _numeric(pred, "true_rul"), "pred": _numeric(pred, "pred_rul")})
    df = df.dropna().sort_values("true", kind="stable").reset_index(drop=True)
    if df.empty:
        raise Skip(f"{PREDICTIONS} has no numeric predictions")
    x = np.arange(1, len(df) + 1)
    fig = _figure(9.0, 4.4)
    ax = fig.subplots()
    ax.vlines(x, df["true"], df["pred"], color="tab:gray", alpha=0.4, linewidth=1)
    ax.plot(x, df["true"], color="black", marker="o", markersize=3, linewidth=1.2, label="true RUL")
    ax.scatter(x, df["pred"], color="tab:red", s=14, zorder=3, label="predicted RUL")
    ax.set_xlabel("test unit (sorted by true RUL)")
    ax.set_ylabel("RUL (cycles)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    nasa = finite(run.test.get("nasa_score"))
    rmse = finite(run.test.get("rmse_last"))
    subtitle = f"{run.dataset} · {len(df)} units · NASA score " + (
        f"{nasa:.1f}" if nasa is not None else "n/a"
    )
    if rmse is not None:
        subtitle += f" · RMSE {rmse:.2f} cycles"
    _title(fig, TITLE_PREDICTIONS, subtitle)
    return Rendered("predictions", TITLE_PREDICTIONS, subtitle, fig)


def trajectories_plot(run: RunData, max_units: int = 2) -> Rendered:
    """True vs predicted RUL over the whole life of one or two test engines."""
    tr = run.trajectories
    if tr is None:
        raise Skip(run.why_missing(TRAJECTORIES))
    units = list(pd.unique(tr["unit"]))[:max_units]
    if not units:
        raise Skip(f"{TRAJECTORIES} has no units")
    fig = _figure(5.0 * len(units) + 1.0, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(units), sharey=True))
    for ax, unit in zip(axes, units):
        part = tr[tr["unit"] == unit].sort_values("cycle", kind="stable")
        cycle = _numeric(part, "cycle")
        ax.plot(cycle, _numeric(part, "true_rul"), color="black", linewidth=1.5, label="true RUL")
        ax.plot(
            cycle, _numeric(part, "pred_rul"), color="tab:red", linewidth=1.2, label="predicted RUL"
        )
        ax.set_title(f"unit {unit}", fontsize=10)
        ax.set_xlabel("time (cycles)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("RUL (cycles)")
    subtitle = f"{run.dataset} · test unit(s) {', '.join(str(u) for u in units)}"
    _title(fig, TITLE_TRAJECTORIES, subtitle)
    return Rendered("trajectories", TITLE_TRAJECTORIES, subtitle, fig)


def confusion_plot(run: RunData) -> Rendered:
    """The test health-state confusion matrix (rows true, columns predicted) with counts."""
    conf = run.test.get("confusion")
    try:
        mat = np.asarray(conf, dtype=float)
    except (TypeError, ValueError):
        mat = np.empty(0)
    if mat.shape != (3, 3) or not np.isfinite(mat).all():
        raise Skip(f"{METRICS} has no 3x3 test confusion matrix")
    fig = _figure(5.6, 4.8)
    ax = fig.subplots()
    image = ax.imshow(mat, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="test units")
    rows = mat.sum(axis=1, keepdims=True)
    share = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    cut = mat.max() / 2 if mat.max() > 0 else 1
    for i in range(3):
        for j in range(3):
            ax.text(
                j,
                i,
                f"{int(mat[i, j])}\n({100 * share[i, j]:.0f}%)",
                ha="center",
                va="center",
                color="white" if mat[i, j] > cut else "black",
                fontsize=10,
            )
    ax.set_xticks(range(3), HEALTH_CLASSES)
    ax.set_yticks(range(3), HEALTH_CLASSES)
    ax.set_xlabel("predicted health state")
    ax.set_ylabel("true health state")
    total = int(mat.sum())
    acc = finite(run.test.get("health_accuracy"))
    if acc is None and total:
        acc = float(np.trace(mat) / total)
    subtitle = f"{run.dataset} · {total} test units · row % of the true class"
    if acc is not None:
        subtitle += f" · accuracy {100 * acc:.1f}%"
    _title(fig, TITLE_CONFUSION, subtitle)
    return Rendered("confusion", TITLE_CONFUSION, subtitle, fig)


RUN_FIGURES = (
    training_curves,
    task_weights,
    grad_norm_histogram,
    predictions_plot,
    trajectories_plot,
    confusion_plot,
)


# ---------------------------------------------------------------- sweeps


def cells_table(runs: Sequence[RunData]) -> pd.DataFrame:
    """One row per finished cell: dataset, balancer, seed and the test metrics."""
    rows = []
    for run in runs:
        rows.append(
            {
                "dataset": run.dataset,
                "balancer": run.balancer,
                "seed": run.seed,
                "cell": run.path.name,
                "protocol": run.metrics.get("protocol"),
                "rmse_last": finite(run.test.get("rmse_last")),
                "nasa_score": finite(run.test.get("nasa_score")),
                "mae": finite(run.test.get("mae")),
                "health_accuracy": finite(run.test.get("health_accuracy")),
                "best_epoch": run.metrics.get("best_epoch"),
                "epochs_run": run.metrics.get("epochs_run"),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = table["seed"].map(
        lambda s: (0, float(s), "") if finite(s) is not None else (1, 0, str(s))
    )
    table = table.assign(_order=order).sort_values(["dataset", "balancer", "_order"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def _order(values: pd.Series, preferred: Sequence[str] = ()) -> list[str]:
    present = [str(v) for v in pd.unique(values)]
    first = [p for p in preferred if p in present]
    return first + sorted(v for v in present if v not in first)


def metric_boxplot(table: pd.DataFrame, metric: str) -> Rendered:
    """Box plot of one test metric over seeds: a panel per subset, a box per balancer."""
    label, title, name = {
        "rmse_last": ("test RMSE, last window (cycles)", TITLE_BOX_RMSE, "box_rmse"),
        "nasa_score": ("test NASA score (lower is better)", TITLE_BOX_NASA, "box_nasa"),
    }[metric]
    data = table.dropna(subset=[metric])
    if data.empty:
        raise Skip(f"no finished cell reports test {metric}")
    datasets = _order(data["dataset"])
    balancers = _order(data["balancer"], ("gaba", "equal"))
    fig = _figure(max(5.0, 3.6 * len(datasets)), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(datasets), squeeze=False)[0])
    for ax, ds in zip(axes, datasets):
        part = data[data["dataset"] == ds]
        present = [b for b in balancers if (part["balancer"] == b).any()]
        values = [part.loc[part["balancer"] == b, metric].to_numpy(float) for b in present]
        ax.boxplot(values, tick_labels=present, widths=0.6, showmeans=True)
        for k, v in enumerate(values, start=1):
            offsets = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
            ax.scatter(k + offsets, v, s=14, color="tab:blue", alpha=0.7, zorder=3)
        ax.set_title(f"{ds} (n = {len(part)})", fontsize=10)
        if metric == "nasa_score" and _wide_range(part[metric], 100.0) and (part[metric] > 0).all():
            ax.set_yscale("log")  # the score is exponential in the error: seeds can differ 1000x
        ax.set_xlabel("balancer")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel(label)
    seeds = data.groupby(["dataset", "balancer"]).size()
    if seeds.min() == seeds.max():
        subtitle = f"{len(data)} runs · {seeds.min()} seed(s) per box"
    else:
        subtitle = f"{len(data)} runs · {seeds.min()}–{seeds.max()} seeds per box"
    key = "box: quartiles · line: median · ▲: mean · dots: seeds"
    _title(fig, title, f"{subtitle}\n{key}")
    subtitle += f" · {key}"
    return Rendered(name, title, subtitle, fig)


def sweep_task_weights(runs: Sequence[RunData]) -> Rendered:
    """Applied task weights λ per epoch, seed mean, one line per balancer, a panel per subset."""
    frames = []
    for run in runs:
        gs = run.grad_stats
        if gs is None or "epoch" not in gs.columns:
            continue
        tasks = _weight_tasks(gs)
        if not tasks:
            continue
        part = pd.DataFrame({"epoch": _numeric(gs, "epoch")})
        for task in tasks:
            part[task] = _numeric(gs, "w_" + task)
        part["dataset"], part["balancer"] = run.dataset, run.balancer
        frames.append(part)
    if not frames:
        raise Skip(f"no cell has {GRAD_STATS} with task weights")
    data = pd.concat(frames, ignore_index=True)
    tasks = [c for c in data.columns if c not in ("epoch", "dataset", "balancer")]
    datasets = _order(data["dataset"])
    balancers = _order(data["balancer"], ("gaba", "equal"))
    colours = {b: f"C{i % 10}" for i, b in enumerate(balancers)}
    fig = _figure(max(4.5, 4.0 * len(datasets)), 2.8 * len(tasks) + 0.8)
    axes = fig.subplots(len(tasks), len(datasets), squeeze=False, sharex="col")
    for col, ds in enumerate(datasets):
        part = data[data["dataset"] == ds]
        for row, task in enumerate(tasks):
            ax = axes[row, col]
            for b in balancers:
                sel = part[part["balancer"] == b]
                if sel.empty or not np.isfinite(sel[task]).any():
                    continue
                stats = sel.groupby("epoch")[task].agg(["mean", "std", "count"])
                ax.plot(stats.index, stats["mean"], color=colours[b], label=b)
                spread = stats["std"].fillna(0.0)
                ax.fill_between(
                    stats.index,
                    stats["mean"] - spread,
                    stats["mean"] + spread,
                    color=colours[b],
                    alpha=0.15,
                    linewidth=0,
                )
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(ds, fontsize=10)
            if row == len(tasks) - 1:
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if col == 0:
                ax.set_ylabel(f"λ {task} (seed mean)")
            if ax.get_lines():
                ax.legend(fontsize=7)
    subtitle = "applied weights, mean ± std over seeds"
    _title(fig, TITLE_WEIGHTS_SWEEP, subtitle)
    return Rendered("task_weights", TITLE_WEIGHTS_SWEEP, subtitle, fig)


# ---------------------------------------------------------------- critical difference

TITLE_CD = "Critical-difference diagram of average ranks (test RMSE)"
CD_MIN_METHODS, CD_MIN_SUBSETS = 4, 2


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``q_alpha sqrt(k (k + 1) / (6 n))`` for ``k`` methods over
    ``n`` data sets (Demšar 2006), ``q_alpha`` = studentized range quantile / sqrt(2)."""
    from scipy.stats import studentized_range

    q = float(studentized_range.ppf(1 - alpha, k, np.inf)) / np.sqrt(2.0)
    return q * float(np.sqrt(k * (k + 1) / (6.0 * n)))


def average_ranks(means: pd.DataFrame) -> pd.Series:
    """Average rank of each method (rows) over the subsets (columns); 1 = lowest value,
    ties share their mean rank. Methods missing a subset are left out."""
    complete = means.dropna(axis=0, how="any")
    return complete.rank(axis=0, method="average").mean(axis=1).sort_values()


def cd_diagram(stats: pd.DataFrame, metric: str = "rmse_mean") -> Rendered:
    """Demšar's critical-difference diagram from a sweep summary's statistics (one row per
    method and subset, the seed mean in ``metric``): methods joined by a bar do not differ
    by more than the Nemenyi critical difference at 0.05."""
    means = stats.pivot_table(index="balancer", columns="dataset", values=metric, aggfunc="first")
    ranks = average_ranks(means)
    k, n = len(ranks), means.shape[1]
    if k < CD_MIN_METHODS or n < CD_MIN_SUBSETS:
        raise Skip(
            f"needs >= {CD_MIN_METHODS} methods over >= {CD_MIN_SUBSETS} subsets with "
            f"results (has {k} over {n})"
        )
    cd = nemenyi_cd(k, n)
    names, values = list(ranks.index), ranks.to_numpy(float)
    fig = _figure(8.0, 2.2 + 0.28 * k)
    ax = fig.subplots()
    ax.set_xlim(0.5, max(k, 1 + cd) + 0.5)
    ax.set_ylim(-(k // 2 + 2), 2.2)
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for r in range(1, k + 1):
        ax.plot([r, r], [0, 0.15], color="black", lw=1)
        ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + cd], [1.4, 1.4], color="tab:red", lw=2)
    ax.text(1 + cd / 2, 1.55, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    half = (k + 1) // 2
    for i, (name, r) in enumerate(zip(names, values)):
        left = i < half
        row = -(i if left else k - 1 - i) - 1.0
        end = 0.5 if left else k + 0.5
        ax.plot([r, r, end], [0, row, row], color="black", lw=0.8)
        ax.text(end, row + 0.08, f"{name} ({r:.2f})", ha="left" if left else "right",
                va="bottom", fontsize=8)  # fmt: skip
    # cliques: maximal runs of methods whose ranks lie within CD of each other
    cliques, level = [], 0
    for i in range(k):
        j = max(j for j in range(i, k) if values[j] - values[i] <= cd + 1e-12)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for a, b in cliques:
        y = -0.35 - 0.22 * level
        ax.plot([values[a] - 0.05, values[b] + 0.05], [y, y], color="tab:blue", lw=3)
        level += 1
    subtitle = (
        f"{k} methods · {n} subsets · rank of the seed mean · Nemenyi CD at 0.05 (Demšar 2006)"
    )
    _title(fig, TITLE_CD, subtitle + "\nblue bars join methods closer than the CD")
    return Rendered("cd_diagram", TITLE_CD, subtitle, fig)
