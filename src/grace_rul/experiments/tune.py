"""``grace tune``: an Optuna study over any config key, judged on the CV score only.

A trial is a K-fold cross-validation (:mod:`grace_rul.folds`) of the base config with the
trial's values set on top; its objective is the CV score (the RMSE over every training
engine's out-of-fold cuts). A trial builds no test split and scores none, so nothing a
study decides can depend on the test set.

Search space (YAML, one config key per entry)::

    train.lr: {log_uniform: [1.0e-5, 3.0e-3]}
    data.window: {int: [30, 50], step: 5}
    model.dropout: {uniform: [0.0, 0.3]}
    train.batch_size: {choice: [128, 256, 512]}

Study
    TPE (:class:`optuna.samplers.TPESampler`, seeded with the config's seed plus the
    worker's index and the trials already in the study, so a resumed study does not
    draw the same points again; with ``--storage`` also with the process's host and pid,
    since processes on several machines cannot agree on an index; ``constant_liar`` so
    parallel workers do not pick the same point).
    With one objective, trials are pruned by :class:`optuna.pruners.MedianPruner` on the
    per-epoch fold score: every fold's best selection score so far is reported at step
    ``(fold - 1) * train.epochs + epoch``; all trials share the seed and so the folds, so
    a step means the same fold and epoch in every trial. ``--objective rmse,cpu`` makes
    it two objectives (CV RMSE, CPU seconds per fold model) with a Pareto front; Optuna
    does not prune multi-objective studies.
Storage
    An Optuna RDB URL: by default ``sqlite:///OUT/study.db``, so a killed ``grace tune``
    resumes with the trials it has. A trial whose process died is failed and queued again
    with the same values; the retry resumes the dead trial's fold runs from their
    ``last.pt``. Workers on one machine find dead trials by their pid at start-up; on
    other machines (``--storage postgresql://...``) a trial that sends no heartbeat for
    twice ``--heartbeat`` seconds is failed and retried the same way.
Outputs (``OUT``)
    ``study.yaml`` (what defines the study: dataset, base settings, space, folds,
    objective; a different one is refused unless ``extend``), ``trials/NNNN/`` (each
    trial's fold runs, no test metrics), ``trials.csv``, ``best.yaml`` (usable as
    ``grace train --config best.yaml``), for two objectives ``pareto.csv``, and
    ``importance.csv``: how much of the CV score's variance over the finished trials each
    parameter explains (fANOVA, ``optuna.importance``; rough with few trials).
"""

from __future__ import annotations

import difflib
import math
import multiprocessing
import os
import shutil
import socket
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grace_rul import rundir
from grace_rul.config import (
    Config,
    Execution,
    config_diff,
    config_keys,
    flatten,
    merge_overrides,
    nested,
)
from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_text, load_yaml
from grace_rul.resolve import resolve_config

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
OBJECTIVES = {"rmse": ("minimize",), "rmse,cpu": ("minimize", "minimize")}
# Keys a study is defined by, not searched over.
FIXED_KEYS = ("preset", "seed", "data.dataset", "data.folds", "data.fold", "train.protocol")
STUDY_FILE = "study.yaml"
SETTINGS_KEY = "settings"  # study.yaml: the resolved base config of every trial
STUDY_DB = "study.db"
TRIALS_DIR = "trials"
TRIALS_CSV = "trials.csv"
BEST_FILE = "best.yaml"
IMPORTANCE_CSV = "importance.csv"
PARETO_CSV = "pareto.csv"
PRUNER = {"n_startup_trials": 4, "n_warmup_steps": 2}  # MedianPruner settings
INSTALL_HINT = 'grace tune needs Optuna: pip install "grace-rul[tune]"'


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise GraceError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# --------------------------------------------------------------------------- search space


@dataclass
class Param:
    """One searched config key and its distribution (see the module docstring)."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "log_uniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.key, self.choices)

    def values(self) -> list[Any]:
        """The values the config must accept: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


def _known_key(key: str) -> bool:
    keys = config_keys()
    return key in keys or (key.startswith("balancer.options.") and len(key) > 17)


def parse_space(doc: Any, where: str = "space") -> list[Param]:
    """The :class:`Param` list of a space mapping; every problem is one ``GraceError`` line."""
    if not isinstance(doc, dict) or not doc:
        raise GraceError(f"{where}: the search space must be a non-empty mapping of config keys")
    params = []
    for key, spec in doc.items():
        key = str(key)
        if not _known_key(key):
            near = difflib.get_close_matches(key, config_keys(), n=4, cutoff=0.6)
            hint = f" (did you mean: {', '.join(near)})" if near else ""
            raise GraceError(f"{where}: '{key}' is not a config key{hint}")
        if key in FIXED_KEYS:
            raise GraceError(f"{where}: '{key}' defines the study; set it with the flags instead")
        if not isinstance(spec, dict):
            raise GraceError(f"{where}: '{key}' needs a distribution, e.g. {{uniform: [0, 1]}}")
        kinds = [k for k in spec if k != "step"]
        if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
            raise GraceError(
                f"{where}: '{key}' has an unknown distribution {', '.join(map(str, kinds))!s} "
                f"(choose one of: {', '.join(DISTRIBUTIONS)})"
            )
        kind, arg = kinds[0], spec[kinds[0]]
        params.append(_param(where, key, kind, arg, spec.get("step")))
    return params


def _param(where: str, key: str, kind: str, arg: Any, step: Any) -> Param:
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise GraceError(f"{where}: '{key}' choice needs a non-empty list")
        if step is not None:
            raise GraceError(f"{where}: '{key}': step applies to int and uniform only")
        return Param(key, kind, choices=list(arg))
    ok = isinstance(arg, list) and len(arg) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
    if not ok or not all(math.isfinite(float(v)) for v in arg):
        raise GraceError(f"{where}: '{key}' {kind} needs two finite numbers [low, high]")
    low, high = float(arg[0]), float(arg[1])
    if not low < high:
        raise GraceError(f"{where}: '{key}' bounds are in the wrong order ({arg[0]} >= {arg[1]})")
    if kind == "log_uniform" and low <= 0:
        raise GraceError(f"{where}: '{key}' log_uniform needs bounds > 0 (got {arg[0]})")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise GraceError(f"{where}: '{key}' int needs whole-number bounds")
    if step is not None:
        if kind == "log_uniform" or not isinstance(step, (int, float)) or step <= 0:
            raise GraceError(f"{where}: '{key}': step must be > 0, for int and uniform only")
        if kind == "int" and not float(step).is_integer():
            raise GraceError(f"{where}: '{key}': an int step must be a whole number")
    return Param(key, kind, low, high, None if step is None else float(step))


# --------------------------------------------------------------------------- the study


@dataclass
class TuneSpec:
    """Everything that defines a study (``study.yaml``) and how its workers run."""

    out: str
    base: dict[str, Any]  # nested overrides on top of the preset (with data.dataset)
    preset: str
    space: dict[str, Any]
    folds: int
    objective: str
    seed: int
    trials: int
    storage: str
    heartbeat: int = 60
    execution: dict[str, Any] = field(default_factory=dict)
    shared: bool = False  # --storage: a study that processes on other machines may join

    def defining(self) -> dict[str, Any]:
        """What ``study.yaml`` holds and a restart must match."""
        return {
            "dataset": (self.base.get("data") or {}).get("dataset"),
            "preset": self.preset,
            "base": self.base,
            "space": self.space,
            "folds": self.folds,
            "objective": self.objective,
            "seed": self.seed,
        }

    @property
    def study_name(self) -> str:
        return Path(self.out).resolve().name


def base_config(spec: TuneSpec, values: dict[str, Any] | None = None) -> Config:
    """The config of a trial: preset < base overrides < the trial's values, with folds."""
    layers = merge_overrides(
        spec.base, nested((values or {}).items()), {"data": {"folds": spec.folds}}
    )
    return resolve_config(spec.preset, layers)


def check_space(spec: TuneSpec, params: list[Param]) -> None:
    """Each bound and choice must make a valid config (one line naming the key)."""
    for p in params:
        for value in p.values():
            v = int(value) if p.kind == "int" else value
            try:
                base_config(spec, {p.key: v})
            except GraceError as exc:
                raise GraceError(f"space: {p.key}={v!r} is not a valid setting ({exc})") from None


def open_storage(spec: TuneSpec) -> Any:
    """The study's Optuna RDB storage; one line naming the URL when it cannot be opened."""
    optuna = _optuna()
    try:
        return optuna.storages.RDBStorage(
            spec.storage,
            heartbeat_interval=spec.heartbeat,
            grace_period=2 * spec.heartbeat,
            heartbeat_stale_trial_callback=_retry,
        )
    except Exception as exc:  # SQLAlchemy / driver errors of every kind
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GraceError(f"cannot open tuning storage {_redact(spec.storage)}: {text}") from None


def _redact(url: str) -> str:
    """A storage URL without its password."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        auth, _, host = tail.rpartition("@")
        user = auth.split(":", 1)[0]
        return f"{head}://{user}:***@{host}"
    return url


def _retry(study: Any, trial: Any) -> None:
    """A failed (dead) trial is queued again with its values; the retry resumes its runs."""
    origin = int(trial.user_attrs.get("resumes", trial.number))
    study.enqueue_trial(trial.params, user_attrs={"resumes": origin}, skip_if_exists=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: Any) -> list[int]:
    """Fail (and queue again) the running trials of this machine whose process is gone."""
    optuna = _optuna()
    host = socket.gethostname()
    dead = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not _alive(pid):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            _retry(study, t)
            dead.append(t.number)
    return dead


def _counts(study: Any) -> tuple[int, int]:
    """(trials finished, pruned, running or queued; trials failed) of the study."""
    S = _optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    busy = sum(t.state in (S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING) for t in trials)
    return busy, sum(t.state == S.FAIL for t in trials)


def prepare_study(spec: TuneSpec, extend: bool = False) -> Any:
    """Check or write ``study.yaml`` and open (or create) the Optuna study."""
    optuna = _optuna()
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise GraceError(f"--out {out} exists and is not a directory")
    path = out / STUDY_FILE
    # The resolved base config, saved beside its definition: a preset whose values changed
    # between versions (0.1's `default` is not 0.2's) keeps its name, not its trials' base.
    settings = base_config(spec).to_dict()
    if path.is_file():
        saved = load_yaml(path, "study file")
        old_settings = saved.pop(SETTINGS_KEY, None)
        if saved != spec.defining() and not extend:
            diff = [k for k in spec.defining() if saved.get(k) != spec.defining()[k]]
            if "base" in diff:  # name the settings: "base settings (data.window)"
                old, new = flatten(saved.get("base") or {}), flatten(spec.base)
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                diff[diff.index("base")] = f"base settings ({', '.join(keys)})"
            raise GraceError(
                f"{out} holds a study with another {', '.join(diff)} (use --extend to continue "
                "it with these settings, or another --out)"
            )
        if old_settings is not None and old_settings != settings and not extend:
            keys = config_diff(old_settings, settings)
            raise GraceError(
                f"{out} holds a study whose base settings have changed since it started "
                f"({', '.join(keys)}; the preset or GRACE changed): use --extend to continue "
                "it with today's, or another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise GraceError(f"--out {out} is not empty and holds no {STUDY_FILE}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives in it
    try:
        storage = open_storage(spec)
    except GraceError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    directions = list(OBJECTIVES[spec.objective])
    try:
        study = optuna.create_study(
            storage=storage, study_name=spec.study_name, directions=directions,
            load_if_exists=True,
        )  # fmt: skip
    except ValueError as exc:  # e.g. the same study name with other directions
        raise GraceError(f"study {spec.study_name}: {exc}") from None
    doc = {**spec.defining(), SETTINGS_KEY: settings}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return study


def run_tune(spec: TuneSpec, *, workers: int = 1, extend: bool = False) -> dict[str, Any]:
    """Run (or resume) the study of ``spec`` with ``workers`` local processes; write outputs.

    Returns a summary: trials by state, the best trial(s) and where the outputs are.
    """
    params = parse_space(spec.space)
    check_space(spec, params)
    from grace_rul.folds import count_units

    cfg = base_config(spec)
    n_units = count_units(cfg, spec.execution.get("data_dir"))
    if spec.folds > n_units:
        raise GraceError(f"--folds {spec.folds} is more than the {n_units} training units")
    study = prepare_study(spec, extend)
    dead = fail_dead_trials(study)
    if dead:
        print(f"grace tune: trial(s) {dead} died with their process: queued again", file=sys.stderr)
    if workers <= 1:
        work(spec, 0)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(spec, i, os.getpid())) for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode not in (0, None) for p in procs):
            codes = [p.exitcode for p in procs]
            raise GraceError(f"a tuning worker failed (exit codes {codes}); see its stderr")
    return write_outputs(spec, study)


def _worker(spec: TuneSpec, index: int, parent: int) -> None:
    from grace_rul.experiments.executors import _init_worker

    _init_worker(int(spec.execution.get("threads") or 1), parent)
    try:
        work(spec, index)
    except GraceError as exc:
        print(f"grace tune worker {index}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def work(spec: TuneSpec, index: int) -> None:
    """One worker's loop: run trials until the study has ``spec.trials`` of them."""
    optuna = _optuna()
    params = parse_space(spec.space)
    storage = open_storage(spec)
    # Seeded, but not the same draws again when a study resumes or a second worker joins.
    started = len(optuna.load_study(study_name=spec.study_name, storage=storage).trials)
    seed = spec.seed + 1000 * index + started
    if spec.shared:  # processes on several machines cannot agree on an index
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    pruner = optuna.pruners.MedianPruner(**PRUNER)
    study = optuna.load_study(
        study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner
    )
    while True:
        busy, failed = _counts(study)
        if busy >= spec.trials or failed > spec.trials:
            break
        # A setting that cannot train (or crashes) fails its trial, not the study.
        study.optimize(lambda t: objective(spec, params, t), n_trials=1, catch=(Exception,))
        write_outputs(spec, study)


def trial_dir(spec: TuneSpec, trial: Any) -> Path:
    """A trial's fold runs: ``trials/NNNN`` of the trial it resumes, or its own number."""
    number = int(trial.user_attrs.get("resumes", trial.number))
    return Path(spec.out) / TRIALS_DIR / f"{number:04d}"


def objective(spec: TuneSpec, params: list[Param], trial: Any) -> float | tuple[float, float]:
    """Train the trial's K folds (no test split) and return its CV score (and CPU seconds)."""
    optuna = _optuna()
    from grace_rul.trainer import train

    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    values = {p.key: p.suggest(trial) for p in params}
    cfg = base_config(spec, values)
    path = trial_dir(spec, trial)
    resume = path.is_dir() and (path / rundir.CONFIG).is_file()
    if path.is_dir() and not resume:
        shutil.rmtree(path)
    single = len(OBJECTIVES[spec.objective]) == 1

    def report(step: int, score: float) -> None:
        if single and math.isfinite(score):
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (score {score:.3f})")

    execution = Execution(**{**spec.execution, "quiet": True, "progress": False})
    started = time.perf_counter()
    metrics = train(cfg, path, execution=execution, resume=resume, score_test=False,
                    on_epoch=report)  # fmt: skip
    trial.set_user_attr("cv_std", metrics["cv"]["std"])
    trial.set_user_attr("fold_rmse", metrics["cv"]["fold_rmse"])
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
    trial.set_user_attr("cpu", metrics["cpu"])  # CPU seconds are this CPU's
    rmse = float(metrics["cv"]["rmse"])
    print(
        f"grace tune: trial {trial.number} CV RMSE {rmse:.3f} "
        f"({metrics['cpu_seconds_per_model']:.0f} CPU-s per model)",
        file=sys.stderr,
    )
    return rmse if single else (rmse, float(metrics["cpu_seconds_per_model"]))


# --------------------------------------------------------------------------- outputs


def write_outputs(spec: TuneSpec, study: Any) -> dict[str, Any]:
    """``trials.csv``, ``best.yaml`` and (two objectives) ``pareto.csv``; returns a summary."""
    optuna = _optuna()
    out = Path(spec.out)
    S = optuna.trial.TrialState
    frame = study.trials_dataframe(multi_index=False)
    atomic_write_text(out / TRIALS_CSV, frame.to_csv(index=False))
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in S}
    summary: dict[str, Any] = {"study": str(out), "trials": states}
    done = [t for t in trials if t.state == S.COMPLETE]
    if not done:
        return summary
    if len(OBJECTIVES[spec.objective]) == 1:
        best = min(done, key=lambda t: t.value)
        front = [best]
    else:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        best = front[0]
        rows = ["number,cv_rmse,cpu_seconds_per_model," + ",".join(best.params)]
        for t in front:
            vals = ",".join(str(t.params.get(k, "")) for k in best.params)
            rows.append(f"{t.number},{t.values[0]},{t.values[1]},{vals}")
        atomic_write_text(out / PARETO_CSV, "\n".join(rows) + "\n")
    layers = merge_overrides(spec.base, nested(best.params.items()))
    doc = {"preset": spec.preset, **layers}
    score = best.values[0]
    header = (
        f"# grace tune {out.name}: best of {len(done)} finished trials, trial {best.number}, "
        f"{spec.folds}-fold CV RMSE {score:.3f} (validation only; no test set was used).\n"
        f"# Train it: grace train --config {BEST_FILE} [--folds K] --out DIR\n"
    )
    atomic_write_text(out / BEST_FILE, header + yaml.safe_dump(doc, sort_keys=False))
    summary["best"] = {"number": best.number, "cv_rmse": score, "params": best.params}
    if len(front) > 1:
        summary["pareto"] = [{"number": t.number, "values": list(t.values)} for t in front]
    importance = _importance(study, done)
    if importance:
        rows = ["param,importance"] + [f"{k},{v:.4f}" for k, v in importance.items()]
        atomic_write_text(out / IMPORTANCE_CSV, "\n".join(rows) + "\n")
        summary["importance"] = {k: round(v, 4) for k, v in importance.items()}
    return summary


def _importance(study: Any, done: list[Any]) -> dict[str, float]:
    """fANOVA importance of each parameter for the CV score (the first objective); empty
    while fewer than two finished trials vary any parameter."""
    optuna = _optuna()
    varied = {k for t in done for k in t.params if len({str(u.params.get(k)) for u in done}) > 1}
    if len(done) < 2 or not varied:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # deterministic forest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        return optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda t: t.values[0], params=sorted(varied)
        )
