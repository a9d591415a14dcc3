"""How much early-stopping patience do finished runs need? A replay of their histories.

    python benchmarks/patience.py runs/accuracy-default runs/accuracy-small runs/recipe

A run is deterministic up to the epoch it stops at, so a smaller patience P changes nothing
before that epoch: replaying ``history.csv`` (its ``is_best`` flags, made by the
validation selection score) shows where the run would have stopped with P and whether the
epoch it finally selected comes before that stop (then the selected model, and every test
figure, is identical). No test data is read. Writes ``benchmarks/results/patience.csv``:
per patience, the runs whose selected epoch is unchanged and the share of epochs saved.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import pandas as pd

from grace_rul.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "patience.csv"
PATIENCES = [3, 5, 8, 10, 15]


def replay(best_flags: list[int], patience: int) -> tuple[int, int]:
    """(epochs run, 1-based epoch selected) of a history under ``patience``."""
    best, stale = 0, 0
    for i, flag in enumerate(best_flags, start=1):
        if flag:
            best, stale = i, 0
        else:
            stale += 1
        if stale >= patience:
            return i, best
    return len(best_flags), best


def finished_histories(dirs: list[Path]) -> dict[str, list[int]]:
    """``is_best`` flags of every finished run (``metrics.json`` present) under ``dirs``
    (sweep directories, or directories of run directories)."""
    out = {}
    for top in dirs:
        if not top.is_dir():
            raise SystemExit(f"{top}: not a directory")
        for history in sorted(top.glob("**/history.csv")):
            if (history.parent / "metrics.json").is_file():
                flags = pd.read_csv(history)["is_best"].astype(int).tolist()
                out[str(history.parent)] = flags
    return out


def rows(histories: dict[str, list[int]], patiences: list[int]) -> list[dict]:
    """Per patience: runs replayed, runs selecting the same epoch, epochs run and saved."""
    total = sum(len(f) for f in histories.values())
    out = []
    for p in patiences:
        same, used = 0, 0
        for flags in histories.values():
            ran, selected = replay(flags, p)
            same += selected == replay(flags, len(flags) + 1)[1]
            used += ran
        saved = round(100 * (total - used) / total, 1)
        out.append({"patience": p, "runs": len(histories), "same_selected_epoch": same,
                    "epochs_run": used, "epochs_saved_pct": saved})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="directories holding finished runs")
    ap.add_argument("--patience", nargs="+", type=int, default=PATIENCES)
    args = ap.parse_args(argv)
    histories = finished_histories(args.dirs)
    if not histories:
        raise SystemExit("no finished runs in " + ", ".join(map(str, args.dirs)))
    table = rows(histories, args.patience)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(RESULTS, buf.getvalue())
    print(buf.getvalue(), end="")


if __name__ == "__main__":
    main()
