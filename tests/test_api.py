"""The public API is one import, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys


def test_the_five_names_import_from_the_package():
    from grace_rul import load_model, predict, resolve_config, run_sweep, train
    from grace_rul.experiments.sweep import run_sweep as sweep_home
    from grace_rul.inference.loader import load_model as loader_home
    from grace_rul.inference.prediction import predict as prediction_home
    from grace_rul.resolve import resolve_config as resolve_home
    from grace_rul.trainer import train as trainer_home

    assert train is trainer_home
    assert resolve_config is resolve_home
    assert run_sweep is sweep_home
    assert load_model is loader_home
    assert predict is prediction_home


def test_every_public_name_resolves():
    import grace_rul

    for name in grace_rul.__all__:
        assert getattr(grace_rul, name) is not None


def test_import_grace_rul_does_not_load_torch():
    code = "import sys, grace_rul; grace_rul.__all__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cpu_model_names_the_cpu_and_its_matrix_isa(tmp_path):
    import platform

    import grace_rul

    info = tmp_path / "cpuinfo"
    for flags, isa in (("fpu avx2 avx512f amx_tile", "AMX"), ("fpu avx2 avx512f", "AVX-512"),
                       ("fpu sse4_2 avx2", "AVX2")):  # fmt: skip
        info.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9\nflags\t\t: {flags}\n")
        grace_rul.cpu_model.cache_clear()
        assert grace_rul.cpu_model(str(info)) == f"Test CPU 9 ({isa})"
    grace_rul.cpu_model.cache_clear()
    assert grace_rul.cpu_model(str(tmp_path / "absent")) == (
        platform.processor() or platform.machine()
    )
