"""Which validation score should select the checkpoint? ``train.select=last`` against ``all``.

    nohup python benchmarks/selection.py > selection.log 2>&1 &   # trains the select=all runs
    python benchmarks/selection.py --table-only                    # rewrite CSV + table

The ``select=last`` runs are the accuracy grid's (``runs/accuracy-default``, made by
``benchmarks/accuracy.py``): the default preset, ``gaba``, seeds 42 123 456 789 1024. This
script trains the same cells on FD001 and FD002 with only ``train.select=all`` changed, as a
resumable sweep in ``runs/selection-all``, then pairs the two by seed (same split, same
initialisation) and writes ``benchmarks/results/selection.csv`` - per selection and subset
the test RMSE mean ± std, and for ``all`` the mean paired difference against ``last`` with
its 95 % t-interval and the Wilcoxon signed-rank p - and the table between the
``selection:start`` / ``selection:end`` markers of docs/guides/protocols.md from that CSV.
The test set is scored once per finished run; here it compares two finished recipes and
chooses nothing else.

The accuracy runs were trained with early-stopping patience 15, the default before it
became 8; replaying their histories (``benchmarks/patience.py``) shows patience 8 selects
the same epoch in every one, so both arms are the current default recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grace_rul.config import DEFAULT_PRESET
from grace_rul.resolve import resolve_config
from readme_tables import replace_section
from review import SEEDS, arms_frame, markdown, read_csv, summary_rows, train_arm, write_csv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "selection.csv"
DATASETS = ["FD001", "FD002"]
LAST, ALL = "select=last", "select=all"


def tables(
    last_dir: Path,
    all_dir: Path,
    epochs: dict[str, object],
    results: Path = RESULTS,
    readme: Path | None = None,
) -> None:
    """The CSV from both sweeps (kept as it is when neither exists), then the table."""
    df = arms_frame({LAST: last_dir, ALL: all_dir}, DATASETS)
    if not df.empty:
        write_csv(results, summary_rows("selection", df, LAST, DEFAULT_PRESET, epochs))
    replace_section("selection", markdown(read_csv(results), LAST), readme)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="cells in parallel (1 thread each)")
    ap.add_argument("--last", type=Path, default=ROOT / "runs" / f"accuracy-{DEFAULT_PRESET}",
                    help="the accuracy grid's sweep directory (the select=last runs)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "selection-all")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the CSV and the table")
    args = ap.parse_args(argv)
    epochs = resolve_config(DEFAULT_PRESET).train.epochs
    if not args.table_only:
        train_arm(args.out, DATASETS, SEEDS, {"train": {"select": "all"}}, args.workers)
    tables(args.last, args.out, dict.fromkeys(DATASETS, f"up to {epochs}"))
    print(f"wrote {RESULTS} and the table")


if __name__ == "__main__":
    main()
