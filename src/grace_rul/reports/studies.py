"""Report pages for a cross-validation directory and for a ``grace tune`` study.

A cross-validation page shows the CV score, every fold's validation and test score and
the out-of-fold predictions; a study page shows Optuna's optimisation history, its
parameter importances (:func:`optuna.importance.get_param_importances`) and, for two
objectives, the Pareto front. Figures are drawn on :class:`matplotlib.figure.Figure`
directly, as every report figure is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from grace_rul import rundir
from grace_rul.errors import GraceError
from grace_rul.io import read_yaml_file
from grace_rul.reports import page as P
from grace_rul.reports.figures import Rendered, Skip, _figure, _title
from grace_rul.rundir import RunDir

if TYPE_CHECKING:
    import optuna

# draws (title, builder) figures; returns their HTML blocks and the file names written
Draw = Callable[[list[tuple[str, Callable[[], Rendered]]]], tuple[list[str], set[str]]]

TITLE_OOF = "Out-of-fold predictions of every training engine's cuts"
TITLE_HISTORY = "Optimisation history"
TITLE_IMPORTANCE = "Parameter importances"
TITLE_PARETO = "Pareto front: CV RMSE against CPU seconds per model"
FIGURE_NAMES = ("oof", "tune_history", "tune_importance", "tune_pareto")


def is_study_dir(path: Path) -> bool:
    """A ``grace tune`` directory: ``study.yaml`` beside its trials."""
    from grace_rul.experiments.tune import STUDY_FILE

    return (Path(path) / STUDY_FILE).is_file()


# --------------------------------------------------------------------------- folds


def oof_plot(oof: pd.DataFrame) -> Rendered:
    fig = _figure(6.4, 5.0)
    ax = fig.add_subplot()
    for fold, g in oof.groupby("fold", sort=True):
        ax.scatter(g["true"], g["predicted"], s=8, alpha=0.6, label=f"fold {fold}")
    top = float(max(oof["true"].max(), oof["predicted"].max(), 1.0))
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    ax.set_xlabel("true RUL at the cut (cycles)")
    ax.set_ylabel("predicted RUL (cycles)")
    ax.legend(fontsize=8)
    sub = (
        f"{oof['unit'].nunique()} engines, {len(oof)} cuts; each predicted by the model without it"
    )
    _title(fig, TITLE_OOF, sub)
    return Rendered("oof", TITLE_OOF, sub, fig)


def folds_page(path: Path, draw: Draw) -> tuple[str, set[str]]:
    """The report page of a finished cross-validation directory."""
    run = RunDir(path)
    m = run.read_metrics()
    oof = run.read_table(rundir.OOF)
    blocks, written = draw([(TITLE_OOF, lambda: oof_plot(oof))])
    cv = m.get("cv") or {}
    rows = pd.DataFrame(
        [
            {
                "fold": f["fold"],
                "validation RMSE (own fold)": f.get("val_rmse"),
                "best epoch": f.get("best_epoch"),
                "epochs": f.get("epochs_run"),
                "test RMSE (this model)": (f.get("test") or {}).get("rmse_last"),
            }
            for f in m.get("fold_runs", [])
        ]
    )
    test = m.get("test") or {}
    cards = [
        ("CV score", P.fmt(cv.get("rmse")), f"RMSE over {cv.get('cuts', '?')} out-of-fold cuts"),
        ("fold spread", P.fmt(cv.get("std")), "sample std of the fold RMSEs"),
        ("ensemble test RMSE", P.fmt(test.get("rmse_last")), "last window, scored once"),
    ]
    heading = f"{m.get('dataset')} · {m.get('balancer')} · seed {m.get('seed')}"
    body = [
        f'<h1>GRACE cross-validation report</h1><p class="sub">{P.esc(heading)} · '
        f"{m.get('folds')} folds · preset {P.esc(m.get('preset', '?'))} · "
        f"<code>{P.esc(path.resolve())}</code></p>",
        P.protocol_banner([m.get("protocol")], [m.get("protocol_label")]),
        P.cards_html(cards),
        "<h2>Folds</h2>",
        P.table_html(rows, {c: P.fmt for c in rows.columns if "RMSE" in c}),
        f"<p>Each fold's own report: <code>grace report {P.esc(path)}/foldN</code>.</p>",
        "<h2>Figures</h2>",
        *blocks,
    ]
    return P.document(f"GRACE cross-validation — {heading}", "\n".join(body)), written


# --------------------------------------------------------------------------- studies


def _load_study(path: Path):
    from grace_rul.experiments.tune import STUDY_DB, _optuna

    optuna = _optuna()
    db = path / STUDY_DB
    if not db.is_file():
        raise GraceError(f"{path} has no {STUDY_DB}; a study on another storage: report its copy")
    storage = f"sqlite:///{db.absolute()}"
    try:
        return optuna.load_study(study_name=path.resolve().name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise GraceError(f"{db} holds no single study (found: {names})") from None
        return optuna.load_study(study_name=names[0], storage=storage)


def history_plot(study: optuna.Study) -> Rendered:
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        raise Skip("no finished trial yet")
    fig = _figure(6.8, 4.2)
    ax = fig.add_subplot()
    x = [t.number for t in done]
    y = [t.values[0] for t in done]
    ax.scatter(x, y, s=14, label="finished trial")
    ax.plot(x, np.minimum.accumulate(y), color="tab:red", label="best so far")
    pruned = [t.number for t in study.trials if t.state == TrialState.PRUNED]
    for n in pruned:
        ax.axvline(n, color="grey", alpha=0.25, lw=1)
    ax.set_xlabel("trial")
    ax.set_ylabel("CV RMSE (cycles)")
    ax.legend(fontsize=8)
    sub = f"{len(done)} finished, {len(pruned)} pruned (grey lines)"
    _title(fig, TITLE_HISTORY, sub)
    return Rendered("tune_history", TITLE_HISTORY, sub, fig)


def importance_plot(study: optuna.Study) -> Rendered:
    import optuna

    try:
        target = None if len(study.directions) == 1 else (lambda t: t.values[0])
        with warnings.catch_warnings():  # "importances of params to achieve low target": yes
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError) as exc:
        raise Skip(f"Optuna cannot rank the parameters yet ({str(exc).splitlines()[0]})") from None
    if not imp:
        raise Skip("no parameter varied")
    fig = _figure(6.4, 0.5 * len(imp) + 1.6)
    ax = fig.add_subplot()
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance for the CV RMSE (fANOVA)")
    sub = "Optuna's get_param_importances over the finished trials"
    _title(fig, TITLE_IMPORTANCE, sub)
    return Rendered("tune_importance", TITLE_IMPORTANCE, sub, fig)


def pareto_plot(study: optuna.Study) -> Rendered:
    from optuna.trial import TrialState

    if len(study.directions) < 2:
        raise Skip("one objective: no Pareto front")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        raise Skip("no finished trial yet")
    front = {t.number for t in study.best_trials}
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    other = [t for t in done if t.number not in front]
    best = sorted((t for t in done if t.number in front), key=lambda t: t.values[1])
    ax.scatter([t.values[1] for t in other], [t.values[0] for t in other], s=14, c="grey")
    ax.plot([t.values[1] for t in best], [t.values[0] for t in best], "o-", color="tab:red")
    ax.set_xlabel("CPU seconds per fold model")
    ax.set_ylabel("CV RMSE (cycles)")
    sub = f"{len(best)} trials on the front (red) of {len(done)} finished"
    _title(fig, TITLE_PARETO, sub)
    return Rendered("tune_pareto", TITLE_PARETO, sub, fig)


def study_page(path: Path, draw: Draw) -> tuple[str, set[str]]:
    """The report page of a ``grace tune`` directory."""
    from grace_rul.experiments.tune import BEST_FILE, STUDY_FILE

    study = _load_study(path)
    blocks, written = draw(
        [
            (TITLE_HISTORY, lambda: history_plot(study)),
            (TITLE_IMPORTANCE, lambda: importance_plot(study)),
            (TITLE_PARETO, lambda: pareto_plot(study)),
        ]
    )
    states = pd.Series([t.state.name.lower() for t in study.trials]).value_counts()
    spec = read_yaml_file(path / STUDY_FILE) or {}
    body = [
        f'<h1>GRACE tuning report</h1><p class="sub">{P.esc(spec.get("dataset"))} · '
        f"{spec.get('folds')}-fold CV · objective {P.esc(spec.get('objective'))} · "
        f"<code>{P.esc(path.resolve())}</code></p>",
        '<div class="banner val"><strong>Judged on the CV score only</strong> — no trial built '
        "or scored the test split.</div>",
        f"<p>Trials: {P.esc(', '.join(f'{k} {v}' for k, v in states.items()))}.</p>",
        "<h2>Figures</h2>",
        *blocks,
        f"<details><summary>{STUDY_FILE}</summary><pre>{P.esc(yaml.safe_dump(spec))}</pre>"
        "</details>",
    ]
    if (path / BEST_FILE).is_file():
        body.append(
            f"<details open><summary>{BEST_FILE}</summary>"
            f"<pre>{P.esc((path / BEST_FILE).read_text())}</pre></details>"
        )
    return P.document(f"GRACE tuning — {path.name}", "\n".join(body)), written
