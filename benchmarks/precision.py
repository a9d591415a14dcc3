"""Is bf16 autocast as accurate as fp32? 0.1's default (`bilstm`) on FD001, 3 seeds, paired.

    nohup python benchmarks/precision.py > precision.log 2>&1 &   # trains the bf16 runs
    python benchmarks/precision.py --table-only                    # rewrite CSV + table

``--precision auto`` trains under bf16 autocast where the device computes bf16 natively and
in fp32 elsewhere. The fp32 runs are the accuracy grid's (``runs/accuracy-bilstm``, made by
``benchmarks/accuracy.py`` on a CPU without native bf16, where ``auto`` is fp32): FD001,
``gaba``, seeds 42 123 456. This script trains the same cells with only
``train.precision=bf16`` changed, as a resumable sweep in ``runs/precision-bf16``, pairs the
two by seed and writes ``benchmarks/results/precision.csv`` - per precision the test RMSE
mean ± std, and for bf16 the mean paired difference against fp32 with its 95 % t-interval
and the Wilcoxon signed-rank p - and the table between the ``precision:start`` /
``precision:end`` markers of docs/evidence/performance.md. On a CPU without native bf16 the
bf16 arm runs emulated (5x the fp32 epoch time on the 2-core AMD EPYC): native bf16
autocast's numerics, not its speed. The test set is scored once per finished run; this
compares two finished recipes and chooses nothing.

The fp32 runs were trained with early-stopping patience 15, the default before it became
8; replaying their histories (``benchmarks/patience.py``) shows patience 8 selects the same
epoch in every one, so both arms are one recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grace_rul.resolve import resolve_config
from readme_tables import replace_section
from review import PRESET, arms_frame, markdown, read_csv, summary_rows, train_arm, write_csv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "precision.csv"
DATASETS = ["FD001"]
SEEDS = [42, 123, 456]
FP32, BF16 = "fp32", "bf16 autocast"


def tables(
    fp32_dir: Path,
    bf16_dir: Path,
    epochs: dict[str, object],
    results: Path = RESULTS,
    readme: Path | None = None,
) -> None:
    """The CSV from both sweeps (kept as it is when neither exists), then the table."""
    df = arms_frame({FP32: fp32_dir, BF16: bf16_dir}, DATASETS, SEEDS)
    if not df.empty:
        write_csv(results, summary_rows("precision", df, FP32, PRESET, epochs))
    replace_section("precision", markdown(read_csv(results), FP32, SEEDS), readme)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="cells in parallel (1 thread each)")
    ap.add_argument("--fp32", type=Path, default=ROOT / "runs" / f"accuracy-{PRESET}",
                    help="the accuracy grid's sweep directory (the fp32 runs)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "precision-bf16")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the CSV and the table")
    args = ap.parse_args(argv)
    epochs = resolve_config(PRESET).train.epochs
    if not args.table_only:
        train_arm(args.out, DATASETS, SEEDS, {"train": {"precision": "bf16"}}, args.workers)
    tables(args.fp32, args.out, dict.fromkeys(DATASETS, f"up to {epochs}"))
    print(f"wrote {RESULTS} and the table")


if __name__ == "__main__":
    main()
