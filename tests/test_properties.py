"""Property-based tests (hypothesis) of the readers users feed: prediction inputs, model files,
YAML documents. Whatever they are given, they load or raise ``GraceError``: never another
exception, never a non-finite prediction. Examples are few (``max_examples``) so CI stays fast.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grace_rul.data import SENSORS, SETTINGS
from grace_rul.errors import GraceError
from grace_rul.inference.inputs import clean_frame, read_input
from grace_rul.inference.modelfile import read_model_dir, save_model
from grace_rul.inference.prediction import format_predictions, predict
from grace_rul.io import load_yaml_text
from grace_rul.resolve import resolve_config
from test_modelfile import untrained_model

torch.set_num_threads(1)
FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
COLUMNS = ("unit", "cycle", *SETTINGS, *SENSORS)

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=400),
    st.sampled_from(["", "nan", "x", "ENG-1", "=1+1", " 7 ", "1e39", "-0"]),
    st.sampled_from([1e39, -1e39, 3e38, 1e30, -1e12, 2**62, 2**53 + 1]),  # the edges
    st.none(),
)


@st.composite
def frames(draw) -> pd.DataFrame:
    """Tables of the input's columns, some dropped or doubled, with mostly plausible cells."""
    rows = draw(st.integers(min_value=0, max_value=12))
    units = draw(st.lists(st.integers(1, 3), min_size=rows, max_size=rows))
    data = {"unit": units, "cycle": list(range(1, rows + 1))}
    data.update({c: [0.5] * rows for c in COLUMNS[2:]})
    frame = pd.DataFrame(data)
    for _ in range(draw(st.integers(0, 4))):  # a few cells replaced by anything
        if rows:
            column = draw(st.sampled_from(COLUMNS + SENSORS))  # sensors twice as often
            frame[column] = frame[column].astype(object)
            frame.loc[draw(st.integers(0, rows - 1)), column] = draw(cells)
    if draw(st.booleans()):
        frame = frame.drop(columns=[draw(st.sampled_from(COLUMNS))])
    return frame


def _plain(rows: int = 3, **cells) -> pd.DataFrame:
    """A valid one-unit frame with some cells set (``s4={1: 1e39}``)."""
    frame = pd.DataFrame({c: [1] * rows if c == "unit" else list(range(1, rows + 1)) if c == "cycle"
                          else [0.5] * rows for c in COLUMNS})  # fmt: skip
    for column, values in cells.items():
        for row, value in values.items():
            frame.loc[row, column] = value
    return frame


def _finite_frame(clean: pd.DataFrame) -> None:
    values = clean.drop(columns=["unit", "cycle"]).to_numpy(dtype=np.float64)
    assert (np.abs(values) <= np.finfo(np.float32).max).all()  # finite in float32 too
    assert clean["unit"].is_monotonic_increasing


@FAST
@given(frame=frames())
def test_clean_frame_returns_finite_values_or_refuses(frame):
    try:
        clean = clean_frame(frame, SENSORS)
    except GraceError as exc:
        assert "\n" not in str(exc)
        return
    _finite_frame(clean)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(untrained_model(), tmp_path_factory.mktemp("models") / "m")


@FAST
@given(frame=frames())
@example(frame=_plain(s4={1: 1e39}))  # beyond float32 (a trained model said NaN, issue 23)
@example(frame=_plain(s7={2: 1e30}))  # within float32, 1e30 training stds away
def test_predict_is_finite_or_refuses(model_dir, frame):
    model = read_model_dir(model_dir)
    try:
        table = predict(model, frame)
    except GraceError:
        return
    numbers = table[["rul", "rul_lower", "rul_upper", "p_healthy", "p_critical"]]
    assert np.isfinite(numbers.to_numpy(dtype=np.float64)).all()
    json.loads(format_predictions(table, "json"))  # strict JSON: no NaN


@FAST
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        frames().map(lambda f: f.to_csv(index=False).encode()),
    ),
    gz=st.booleans(),
)
def test_any_input_file_is_read_or_refused(body, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(gzip.compress(body) if gz else body)
        try:
            clean = read_input(path, SENSORS)
        except GraceError as exc:
            assert "\n" not in str(exc)
            return
        _finite_frame(clean)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        # the values that broke model files before (issue 23)
        st.sampled_from([-125, 0, -1, 1e308, 2**62, "../../etc/passwd", "/etc/passwd", ""]),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every place in a JSON document (key paths), the root excluded."""
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


ONNX_NAMES = ["model.onnx", "../../../../etc/passwd", "/etc/passwd", "sub/model.onnx", ".."]


@pytest.fixture(scope="module")
def document(model_dir) -> dict:
    return json.loads((model_dir / "grace_model.json").read_text())


@FAST
@given(data=st.data())
def test_a_mutated_model_file_loads_or_refuses(model_dir, document, data):
    doc = copy.deepcopy(document)
    places = [p for p in _paths(doc) if not (len(p) > 3 and p[:2] == ("calibration", "residuals"))]
    for _ in range(data.draw(st.integers(1, 3))):
        place = data.draw(st.sampled_from(places))
        node = doc
        for key in place[:-1]:
            node = node[key] if isinstance(node, (dict, list)) else None
        if isinstance(node, (dict, list)):
            if isinstance(node, dict) and data.draw(st.booleans()):
                node.pop(place[-1], None)
            elif not isinstance(node, list) or place[-1] < len(node):
                node[place[-1]] = data.draw(json_values)
    if data.draw(st.booleans()):
        doc["onnx"] = {"file": data.draw(st.sampled_from(ONNX_NAMES))}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp)
        (target / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
        (target / "grace_model.json").write_text(json.dumps(doc))
        try:
            model = read_model_dir(target)
        except GraceError as exc:
            assert "\n" not in str(exc)
            return
        # What loads is sane: a positive RUL cap and window, ordered thresholds, finite
        # statistics, and every file it names inside its directory.
        c = model.contract
        assert c.max_rul >= 1 and c.window >= 1 and 0 < c.critical_rul < c.degrading_rul
        assert np.isfinite(model.calibration.residuals).all() and np.isfinite(model.centroids).all()
        for m in model.members:
            assert np.isfinite(m.normalizer.mean).all() and (m.normalizer.std > 0).all()
        if model.onnx_file is not None:
            assert Path(model.onnx_file).resolve().parent == target.resolve()
    frame = pd.DataFrame(
        {c: [1, 1, 1] if c == "unit" else [1, 2, 3] if c == "cycle" else [0.5] * 3 for c in COLUMNS}
    )
    try:
        table = predict(model, frame)
    except GraceError:
        return
    assert all(math.isfinite(v) for v in table["rul"])


yaml_text = st.one_of(
    json_values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(
        st.sampled_from(["train", "model", "data", "balancer", "seed", "preset", "x"]),
        json_values,
        max_size=3,
    ).map(yaml.safe_dump),
    st.text(max_size=200),
)


@FAST
@given(text=yaml_text)
def test_any_yaml_document_loads_or_refuses_and_configs_resolve_or_refuse(text):
    try:
        doc = load_yaml_text(text, "config")
    except GraceError as exc:
        assert "\n" not in str(exc)
        return
    if not isinstance(doc, dict):
        return
    try:
        resolve_config("tiny", doc)
    except GraceError as exc:
        assert "\n" not in str(exc)
