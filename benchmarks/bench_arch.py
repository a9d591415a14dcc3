"""Training step time of each architecture (``model.arch``) relative to cnn_bilstm_attention.

One step = forward + the two task losses (summed, as ``equal`` weighting) + backward +
fused AdamW step, as the trainer's optimiser runs it, in fp32. Every architecture is
built at the sizes of a preset (default: ``default``, 40-cycle windows, batch 256) and
timed in interleaved rounds (rotating order) on the same random batch; the step times
(median and minimum wall time, median process CPU time) are reported as ratios to
``cnn_bilstm_attention`` measured in the same run. Random inputs are fine here: this
measures compute, not learning. The CSV goes to ``benchmarks/results/arch_step_time.csv``.

    python benchmarks/bench_arch.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from grace_rul.backbones import BACKBONES, DEFAULT_ARCH, build_model
from grace_rul.data import window_rows
from grace_rul.losses import task_losses
from grace_rul.model import count_parameters
from grace_rul.resolve import resolve_config
from readme_tables import replace_section

OUT = Path(__file__).parent / "results" / "arch_step_time.csv"
COLUMNS = (
    "arch", "preset", "params", "window_rows", "batch", "threads", "steps", "wall_median_s",
    "wall_min_s", "cpu_median_s", "ratio_wall", "ratio_paired", "ratio_min", "ratio_cpu", "cpu",
)  # fmt: skip


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_step(arch: str, preset: str, batch: int, seed: int) -> tuple[Callable[[], None], int, int]:
    """A closure running one training step of ``arch`` at ``preset`` sizes; params; rows."""
    cfg = resolve_config(preset, overrides={"model": {"arch": arch}})
    rows = window_rows(cfg.data)
    torch.manual_seed(seed)
    model = build_model(cfg.model, max_rul=cfg.data.max_rul, window=rows).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True
    )
    x = torch.randn(batch, rows, 14)
    rul, health = torch.rand(batch) * cfg.data.max_rul, torch.randint(0, 3, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        rul_pred, logits, _ = model(x)
        task_losses(rul_pred, logits, rul, health, cfg.data.max_rul).sum().backward()
        opt.step()

    return step, count_parameters(model), rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="sizes of this preset")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=0, help="0: the preset's train.batch_size")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per architecture")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument(
        "--archs", default=",".join([DEFAULT_ARCH, *sorted(set(BACKBONES) - {DEFAULT_ARCH})])
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    batch = args.batch or resolve_config(args.preset).train.batch_size
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if DEFAULT_ARCH not in archs:
        archs.insert(0, DEFAULT_ARCH)
    built = {a: make_step(a, args.preset, batch, args.seed) for a in archs}
    cpu = cpu_name()
    print(f"preset {args.preset} sizes, batch {batch}, threads {args.threads}, fp32, "
          f"{args.steps} timed steps per architecture, interleaved; CPU: {cpu}")  # fmt: skip

    wall: dict[str, list[float]] = {a: [] for a in archs}
    proc: dict[str, list[float]] = {a: [] for a in archs}
    for r in range(args.warmup + args.steps):
        for a in archs[r % len(archs) :] + archs[: r % len(archs)]:
            t0, c0 = time.perf_counter(), time.process_time()
            built[a][0]()
            if r >= args.warmup:
                wall[a].append(time.perf_counter() - t0)
                proc[a].append(time.process_time() - c0)

    # On a shared machine wall time is inflated by other jobs: the process CPU time and the
    # minimum wall time are the steadier estimates.
    med, ref = statistics.median, DEFAULT_ARCH
    rows = []
    for a in archs:
        rows.append({
            "arch": a, "preset": args.preset, "params": built[a][1], "window_rows": built[a][2],
            "batch": batch, "threads": args.threads, "steps": args.steps,
            "wall_median_s": round(med(wall[a]), 5), "wall_min_s": round(min(wall[a]), 5),
            "cpu_median_s": round(med(proc[a]), 5),
            "ratio_wall": round(med(wall[a]) / med(wall[ref]), 3),
            "ratio_paired": round(med(x / y for x, y in zip(wall[a], wall[ref])), 3),
            "ratio_min": round(min(wall[a]) / min(wall[ref]), 3),
            "ratio_cpu": round(med(proc[a]) / med(proc[ref]), 3), "cpu": cpu,
        })  # fmt: skip
    print(f"{'arch':<22}{'params':>9} {'wall':>7} {'min':>7} {'cpu':>7} | {'r_wall':>6} "
          f"{'r_pair':>6} {'r_min':>6} {'r_cpu':>6}")  # fmt: skip
    for row in rows:
        times = f"{row['wall_median_s']:7.4f} {row['wall_min_s']:7.4f} {row['cpu_median_s']:7.4f}"
        ratios = " ".join(f"{row[k]:6.2f}" for k in COLUMNS[10:14])
        print(f"{row['arch']:<22}{row['params']:>9,} {times} | {ratios}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    if args.out == OUT:
        replace_section("arch-speed", table(rows))


def table(rows: list[dict]) -> str:
    """The architectures page's table of a run's rows: parameters, CPU s per step, ratio."""
    lines = [
        "| `model.arch` | parameters | CPU s / step | × `cnn_bilstm_attention` | wall, min |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['arch']}` | {int(r['params']):,} | {float(r['cpu_median_s']):.3f} "
            f"| {float(r['ratio_cpu']):.2f} | {float(r['ratio_min']):.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
