"""``grace tune``: the search space, a study killed and resumed, shared storage, bad input.

Trials are 2-fold cross-validations of the tiny network over 10-cycle FD001 windows,
1-2 epochs per fold: seconds each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

optuna = pytest.importorskip("optuna")

import grace_rul  # noqa: E402
from grace_rul import config  # noqa: E402
from grace_rul.cli import main  # noqa: E402
from grace_rul.errors import GraceError  # noqa: E402
from grace_rul.experiments import tune  # noqa: E402

SPACE = {
    "train.lr": {"log_uniform": [1.0e-4, 3.0e-3]},
    "model.dropout": {"uniform": [0.0, 0.3]},
    "train.batch_size": {"choice": [256, 512]},
}
BASE = ["--preset", "tiny", "--set", "data.window=10", "--threads", "1", "--folds", "2"]


def _space(tmp_path: Path, space: dict | None = None, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space or SPACE))
    return path


def _grace(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from grace_rul.cli import main; sys.exit(main())",
            *args]  # fmt: skip


def _study(out: Path, storage: str | None = None):
    url = storage or f"sqlite:///{(out / tune.STUDY_DB).absolute()}"
    return optuna.load_study(study_name=out.resolve().name, storage=url)


def _finished(study) -> list:
    S = optuna.trial.TrialState
    return [t for t in study.trials if t.state in (S.COMPLETE, S.PRUNED)]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> Path:
    """A 4-trial pruned study, SIGKILLed in the middle of a trial, then resumed."""
    tmp = tmp_path_factory.mktemp("tune")
    out = tmp / "fd001"
    args = _grace("tune", *BASE, "--epochs", "1", "--space", str(_space(tmp)), "--trials", "4",
                  "--out", str(out))  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Mid-trial: the second trial's first fold has finished an epoch.
    while not (out / "trials" / "0001" / "fold1" / "checkpoints" / "last.pt").exists():
        assert time.time() < deadline and proc.poll() is None, "the study never reached trial 1"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_killed_study_resumes_to_the_trials_asked_for_without_duplicates(killed_and_resumed):
    out = killed_and_resumed
    study = _study(out)
    finished = _finished(study)
    assert len(finished) == 4
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 4  # no trial ran twice
    dirs = [t.user_attrs.get("resumes", t.number) for t in finished]
    assert len(set(dirs)) == 4
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 1  # the killed trial, retried
    retry = [t for t in finished if t.user_attrs.get("resumes") == 1]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    # Pruning sees every fold's epochs: 2 folds x 1 epoch reported per full trial.
    fresh = [t for t in finished if "resumes" not in t.user_attrs]
    assert all(len(t.intermediate_values) == 2 for t in fresh)
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}


def test_no_trial_directory_holds_a_test_metric(killed_and_resumed):
    metrics = list((killed_and_resumed / "trials").rglob("metrics.json"))
    assert metrics
    for path in metrics:
        doc = json.loads(path.read_text())
        assert doc["test"] is None and doc.get("intervals") is None
    assert not list((killed_and_resumed / "trials").rglob("predictions.csv"))
    assert not list((killed_and_resumed / "trials").rglob("model"))


def test_best_yaml_trains_with_config_and_folds(killed_and_resumed, tmp_path):
    best = killed_and_resumed / "best.yaml"
    doc = yaml.safe_load(best.read_text())
    assert doc["preset"] == "tiny" and doc["data"]["dataset"] == "FD001"
    assert "folds" not in doc["data"]
    out = tmp_path / "best"
    args = ["train", "--config", str(best), "--folds", "2", "--epochs", "1", "--threads", "1"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    study = _study(killed_and_resumed)
    best_trial = min(
        (t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.value,
    )
    assert cfg["train"]["lr"] == best_trial.params["train.lr"]
    assert cfg["model"]["dropout"] == best_trial.params["model.dropout"]
    assert (out / "model" / "grace_model.json").is_file()


def test_report_of_a_study_draws_history_and_importances(killed_and_resumed):
    assert main(["report", str(killed_and_resumed)]) == 0
    report = killed_and_resumed / "report"
    assert (report / "tune_history.png").is_file()
    assert "Judged on the CV score only" in (report / "report.html").read_text()


def test_the_pruner_ends_a_trial_after_an_epoch_and_leaves_it_resumable(tmp_path):
    spec = tune.TuneSpec(
        out=str(tmp_path / "pruned"), base={"data": {"dataset": "FD001", "window": 10},
        "train": {"epochs": 2}}, preset="tiny", space=SPACE, folds=2, objective="rmse",
        seed=42, trials=1, storage="sqlite://", execution={"threads": 1},
    )  # fmt: skip
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        tune.objective(spec, tune.parse_space(SPACE), trial)
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [0]
    fold1 = tmp_path / "pruned" / "trials" / "0000" / "fold1"
    assert (fold1 / "checkpoints" / "last.pt").is_file()  # a retry resumes it
    assert not (fold1 / "metrics.json").exists()


def test_a_trial_builds_no_test_split(monkeypatch, tmp_path):
    def no_test(*args, **kwargs):
        raise AssertionError("a tuning trial built the test split")

    monkeypatch.setattr("grace_rul.data.windows.test_windows", no_test)
    out = tmp_path / "notest"
    code = main(["tune", *BASE, "--epochs", "1", "--space", str(_space(tmp_path)),
                 "--trials", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert len(_finished(_study(out))) == 1


def test_two_objectives_give_a_pareto_front(tmp_path, capsys):
    out = tmp_path / "pareto"
    code = main(["tune", *BASE, "--epochs", "1", "--space", str(_space(tmp_path)),
                 "--trials", "2", "--objective", "rmse,cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    front = pd.read_csv(out / "pareto.csv")
    assert {"cv_rmse", "cpu_seconds_per_model"} <= set(front.columns) and len(front) >= 1
    assert {t.user_attrs["cpu"] for t in _finished(_study(out))} == {grace_rul.cpu_model()}
    importance = pd.read_csv(out / tune.IMPORTANCE_CSV)  # what moved the CV score
    assert set(importance["param"]) <= set(yaml.safe_load(_space(tmp_path).read_text()))
    assert importance["importance"].sum() == pytest.approx(1.0, abs=1e-3)
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "tune_pareto.png").is_file()


def _two_workers(out: Path, space: Path, storage: str | None) -> None:
    extra = ["--storage", storage] if storage else []
    args = _grace("tune", *BASE, "--epochs", "1", "--space", str(space), "--trials", "3",
                  *extra, "--out", str(out))  # fmt: skip
    # Two `grace tune` commands, as on two machines sharing one storage.
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def _distinct(study) -> None:
    finished = _finished(study)
    assert len(finished) >= 3
    numbers = [t.number for t in finished]
    assert len(set(numbers)) == len(numbers)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)
    workers = {t.user_attrs["pid"] for t in finished} - {os.getpid()}  # the first ran here
    assert len(workers) == 2  # both worker processes ran trials


def test_two_workers_share_one_study_in_postgresql(tmp_path):
    url = os.environ.get("GRACE_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide GRACE_TEST_POSTGRES (.ci/postgres.sh)")
        pytest.skip("no PostgreSQL server: run .ci/postgres.sh and set GRACE_TEST_POSTGRES")
    out = tmp_path / f"pg{os.getpid()}"
    assert main(["tune", *BASE, "--epochs", "1", "--space", str(_space(tmp_path)), "--storage",
                 url, "--trials", "1", "--out", str(out)]) == 0  # fmt: skip
    _two_workers(out, _space(tmp_path), url)
    _distinct(_study(out, url))


def test_two_worker_processes_on_one_sqlite_study_run_distinct_trials(tmp_path):
    out = tmp_path / "workers"
    code = main(["tune", *BASE, "--epochs", "1", "--space", str(_space(tmp_path)),
                 "--trials", "3", "--workers", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    _distinct(_study(out))


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"train.lrr": {"uniform": [0, 1]}},
            "'train.lrr' is not a config key (did you mean: train.lr",
        ),
        ({"train.lr": {"normal": [0, 1]}}, "unknown distribution normal"),
        ({"train.lr": {"log_uniform": [1e-2, 1e-4]}}, "bounds are in the wrong order"),
        ({"train.lr": {"log_uniform": [0, 1e-2]}}, "log_uniform needs bounds > 0"),
        ({"data.window": {"int": [30.5, 50]}}, "whole-number bounds"),
        ({"seed": {"int": [1, 5]}}, "'seed' defines the study"),
        ({"model.dropout": {"uniform": [0.0, 1.5]}}, "model.dropout=1.5 is not a valid setting"),
        ({"train.batch_size": {"choice": []}}, "choice needs a non-empty list"),
    ],
)
def test_bad_space_is_one_line_before_anything_is_written(space, message, tmp_path, cli):
    out = tmp_path / "study"
    result = cli("tune", *BASE, "--space", _space(tmp_path, space), "--trials", "1", "--out", out)
    assert result.code == 2 and len(result.err_lines) == 1
    assert message in result.err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--folds", "1"], "--folds needs K >= 2"),
        (["--folds", "101"], "more than the 100 training units"),
        (["--storage", "postgresql://nobody:secret@127.0.0.1:1/none"],
         "cannot open tuning storage postgresql://nobody:***@127.0.0.1:1/none"),
        (["--storage", "sqlite:////no/such/dir/study.db"], "cannot open tuning storage sqlite:"),
    ],
)  # fmt: skip
def test_bad_folds_and_storage_are_one_line(flags, message, tmp_path, cli):
    out = tmp_path / "study"
    result = cli("tune", *BASE, *flags, "--space", _space(tmp_path), "--trials", "1", "--out", out)
    assert result.code == 2 and len(result.err_lines) == 1
    assert message in result.err and "secret" not in result.err
    assert not out.exists()


def test_a_study_directory_of_another_space_or_dataset_is_refused_unless_extend(
    killed_and_resumed, tmp_path, cli
):
    other = _space(tmp_path, {"train.lr": {"log_uniform": [1e-4, 1e-3]}}, "other.yaml")
    base = [*BASE, "--epochs", "1", "--trials", "4", "--out", killed_and_resumed]
    result = cli("tune", *base, "--space", other)
    assert result.code == 2 and "holds a study with another space" in result.err
    result = cli("tune", *base, "--space", _space(tmp_path), "--dataset", "FD003")
    assert result.code == 2 and "another dataset" in result.err
    # --extend continues it with the new space (4 trials are already there: nothing to run)
    assert cli("tune", *base, "--space", other, "--extend").code == 0


def test_a_study_whose_preset_changed_values_is_refused_naming_them(
    killed_and_resumed, tmp_path, cli, monkeypatch
):
    """A preset keeps its name across versions, not its values (0.1's `default` is not
    0.2's): study.yaml holds the resolved base config, and a restart compares it."""
    out = tmp_path / "study"
    shutil.copytree(killed_and_resumed, out)
    saved = yaml.safe_load((out / "study.yaml").read_text())
    assert saved["settings"]["train"]["epochs"] == 1
    space = _space(tmp_path, saved["space"])  # another test may have extended the fixture's
    tiny = config.PRESETS["tiny"]
    monkeypatch.setitem(config.PRESETS, "tiny", {**tiny, "train": {**tiny["train"], "lr": 0.5}})
    base = [*BASE, "--epochs", "1", "--trials", "4", "--space", space, "--out", out]
    result = cli("tune", *base)
    assert result.code == 2 and len(result.err_lines) == 1
    assert "base settings have changed since it started (train.lr;" in result.err
    assert cli("tune", *base, "--extend").code == 0  # 4 trials already there: nothing runs
    saved = yaml.safe_load((out / "study.yaml").read_text())
    assert saved["settings"]["train"]["lr"] == 0.5


def test_missing_optuna_is_one_line_naming_the_extra(monkeypatch, tmp_path, cli):
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = cli(
        "tune", *BASE, "--space", _space(tmp_path), "--trials", "1", "--out", tmp_path / "x"
    )
    assert result.code == 2 and 'pip install "grace-rul[tune]"' in result.err


def test_space_parser_accepts_every_distribution():
    params = tune.parse_space(
        {
            "train.lr": {"log_uniform": [1e-5, 3e-3]},
            "data.window": {"int": [30, 50], "step": 5},
            "model.dropout": {"uniform": [0.0, 0.3]},
            "train.batch_size": {"choice": [128, 256, 512]},
            "balancer.options.beta": {"uniform": [0.5, 0.99]},
        }
    )
    assert [p.kind for p in params] == ["log_uniform", "int", "uniform", "choice", "uniform"]
    with pytest.raises(GraceError, match="non-empty mapping"):
        tune.parse_space([])
