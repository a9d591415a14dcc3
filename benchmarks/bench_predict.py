"""Time to predict a C-MAPSS test fleet with a loaded model, against the bare network.

Builds a run with an untrained network of the chosen preset (timing does not depend on
the weights), exports it with ``grace_rul.inference.ensemble.export_model``, loads the
model directory and times, as the median of ``--repeats`` interleaved rounds in this process:

* ``network forward``: the baseline, ``grace_rul.model.predict`` on the test windows
  already built and scaled (what any deployment pays at least);
* ``predict(frame)``: ``grace_rul.predict`` on the test rows already in a DataFrame
  (checking, scaling, windowing, forward, intervals, flags);
* ``predict_file``: the same from the file (read + parse + all of the above), what
  ``grace predict`` does after loading;
* the same two with ``backend="onnx"`` when onnxruntime is installed.

    python benchmarks/bench_predict.py --preset small --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grace_rul
from grace_rul.backbones import build_model
from grace_rul.checkpoint import atomic_torch_save
from grace_rul.config import PRESETS
from grace_rul.data import bundled_dir, load_dataset, read_cmapss
from grace_rul.inference.ensemble import export_model
from grace_rul.inference.prediction import predict_file
from grace_rul.model import predict as net_predict
from grace_rul.resolve import resolve_config

TARGET_S = 0.5


def interleaved_medians(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` rounds; every round runs every step in
    turn, so load from other processes hits all steps alike."""
    for fn in steps.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fake_run(cfg, out: Path) -> None:
    """A run directory with an untrained network, written as the trainer writes best.pt."""
    data = load_dataset(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, n_features=len(data.feature_names), max_rul=cfg.data.max_rul)
    atomic_torch_save(
        {
            "config": cfg.to_dict(),
            "inference": net.state_dict(),
            "normalizer": data.normalizer.to_dict(),
            "feature_names": list(data.feature_names),
        },
        out / "checkpoints" / "best.pt",
    )
    (out / "config.yaml").write_text(cfg.to_yaml())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="small")
    parser.add_argument("--dataset", default="FD001")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config(args.preset, overrides={"data": {"dataset": args.dataset}})
    path = Path(str(bundled_dir() / f"test_{cfg.data.dataset}.txt.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        fake_run(cfg, Path(tmp) / "run")
        export_model(Path(tmp) / "run", Path(tmp) / "model", onnx=_has_onnx())
        start = time.perf_counter()
        model = grace_rul.load_model(Path(tmp) / "model")
        load_s = time.perf_counter() - start
        frame = read_cmapss(cfg.data.dataset).test
        windows = model.windows(frame)[0].x
        net = model.members[0].net
        steps = {
            "network forward (baseline)": lambda: net_predict(net, windows),
            "predict(frame)": lambda: grace_rul.predict(model, frame),
            "predict_file": lambda: predict_file(model, path),
        }
        if _has_onnx():
            steps["predict(frame), onnx"] = lambda: grace_rul.predict(model, frame, backend="onnx")
            steps["predict_file, onnx"] = lambda: predict_file(model, path, backend="onnx")
        rows = list(interleaved_medians(steps, args.repeats).items())
    units = frame["unit"].nunique()
    print(
        f"{cfg.data.dataset} test: {units} engines, {len(frame)} rows; preset {cfg.preset} "
        f"({sum(p.numel() for p in net.parameters()):,} parameters); {args.threads} threads; "
        f"median of {args.repeats} interleaved rounds; load_model {load_s * 1000:.0f} ms"
    )
    base = rows[0][1]
    print(f"| step | ms | × forward | target < {TARGET_S} s |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        ok = "met" if seconds < TARGET_S else "missed"
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / base:.2f} | {ok} |")


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
