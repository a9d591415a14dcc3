"""A small synthetic N-CMAPSS file with the real layout, names and dtypes (for tests)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from grace_rul.data.ncmapss import AUX, DS02_UNITS, PARTS


def write_sample(
    path: str | Path,
    dev_units: tuple[int, ...] = DS02_UNITS["dev"],
    test_units: tuple[int, ...] = DS02_UNITS["test"],
    flights: int = 6,
    seconds: int = 400,
    seed: int = 0,
) -> Path:
    """A small synthetic file with the real N-CMAPSS layout, names and dtypes (for tests)."""
    rng = np.random.default_rng(seed)
    w_names = ["alt", "Mach", "TRA", "T2"]
    xs_names = ["T24", "T30", "T48", "T50", "P15", "P2", "P21", "P24", "Ps30", "P40", "P50",
                "Nf", "Nc", "Wf"]  # fmt: skip
    xv_names = ["T40", "P30", "P45", "W21", "W22", "W25", "W31", "W32", "W48", "W50", "SmFan",
                "SmLPC", "SmHPC", "phi"]  # fmt: skip
    t_names = [f"{part}_{kind}_mod" for part in ("fan", "LPC", "HPC", "HPT", "LPT")
               for kind in ("eff", "flow")]  # fmt: skip
    with h5py.File(path, "w") as f:
        for split, units in (("dev", dev_units), ("test", test_units)):
            parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
            for unit in units:
                n_flights = flights + int(rng.integers(0, 3))
                for flight in range(1, n_flights + 1):
                    rul = n_flights - flight
                    wear = flight / n_flights
                    n = seconds
                    t = np.linspace(0, 1, n)
                    w = np.column_stack([
                        10000 + 20000 * np.sin(np.pi * t), 0.3 + 0.4 * np.sin(np.pi * t),
                        60 + 20 * t, 500 + 10 * t,
                    ])  # fmt: skip
                    xs = 100 + w[:, [0]] / 1e3 + 5 * wear + rng.normal(0, 0.5, (n, len(xs_names)))
                    parts["W"].append(w)
                    parts["X_s"].append(xs)
                    parts["X_v"].append(rng.normal(0, 1, (n, len(xv_names))))
                    parts["T"].append(np.full((n, len(t_names)), -wear))
                    parts["Y"].append(np.full((n, 1), float(rul)))
                    aux = [unit, flight, 1 + unit % 3, float(wear < 0.5)]
                    parts["A"].append(np.tile(np.asarray(aux, dtype=np.float64), (n, 1)))
            for p in PARTS:
                f.create_dataset(f"{p}_{split}", data=np.concatenate(parts[p]).astype(np.float64))
        for name, values in (("W_var", w_names), ("X_s_var", xs_names), ("X_v_var", xv_names),
                             ("T_var", t_names), ("A_var", list(AUX))):  # fmt: skip
            f.create_dataset(name, data=np.array(values, dtype="S"))
    return Path(path)
