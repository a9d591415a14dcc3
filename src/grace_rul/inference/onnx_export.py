"""ONNX export of a model's networks, and the onnxruntime session that runs it.

``model.onnx`` holds the networks only. The input is already-scaled windows:
grace_rul applies each member's normaliser and cuts the windows (front padding of short
units) before the graph, exactly as for the PyTorch backend, and averages the members
after it.

* one member: input ``windows`` float32 (batch, rows, sensors), rows = the window, plus
  the 2 summary rows with ``data.window_features``; outputs ``rul``
  (batch,) in cycles and ``health_logits`` (batch, 3) for healthy, degrading, critical.
* an ensemble of M members: input ``windows`` (M, batch, window, sensors), member i's
  windows scaled with member i's normaliser; outputs ``rul`` (M, batch) and
  ``health_logits`` (M, batch, 3), one row per member (grace_rul takes the mean of the
  RUL and of the softmax probabilities).

Exported with the TorchScript exporter (``dynamo=False``), opset 17, a dynamic batch
axis. Needs the ``deploy`` extra: ``pip install "grace-rul[deploy]"`` (onnx, onnxruntime).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from grace_rul.errors import GraceError
from grace_rul.io import atomic_write_bytes

if TYPE_CHECKING:
    from grace_rul.inference.gracemodel import GraceModel

OPSET = 17
DEPLOY_HINT = 'pip install "grace-rul[deploy]"'


def require(module: str) -> None:
    """Refuse in one line when ``onnx`` or ``onnxruntime`` is not installed."""
    try:
        __import__(module)
    except ImportError:
        raise GraceError(f"ONNX needs the '{module}' package: {DEPLOY_HINT}") from None


class _Networks(nn.Module):
    """The members' networks as one graph: RUL and health logits, per member when M > 1."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        if len(self.nets) == 1:
            rul, logits, _ = self.nets[0](windows)
            return rul, logits
        outs = [net(windows[i]) for i, net in enumerate(self.nets)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def export_onnx(model: GraceModel, path: Path) -> dict[str, Any]:
    """Write ``model``'s networks to ``path`` (atomically); returns the JSON description."""
    require("onnx")
    nets = [m.net.eval() for m in model.members]
    graph = _Networks(nets).eval()
    n, c = len(nets), model.contract
    shape = (2, c.rows, len(c.sensors)) if n == 1 else (n, 2, c.rows, len(c.sensors))
    batch_axis = 0 if n == 1 else 1
    buffer = io.BytesIO()
    # Traced with autograd on: under no_grad nn.MultiheadAttention takes its fused fast
    # path (aten::_native_multi_head_attention), which has no ONNX symbolic.
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            graph,
            (torch.zeros(shape),),
            buffer,
            input_names=["windows"],
            output_names=["rul", "health_logits"],
            dynamic_axes={
                "windows": {batch_axis: "batch"},
                "rul": {batch_axis: "batch"},
                "health_logits": {batch_axis: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    atomic_write_bytes(path, buffer.getvalue())
    members = "" if n == 1 else "member, "
    return {
        "file": path.name,
        "opset": OPSET,
        "input": {"windows": f"float32 ({members}batch, rows={c.rows}, sensors={len(c.sensors)})"},
        "outputs": {
            "rul": f"float32 ({members}batch), cycles",
            "health_logits": f"float32 ({members}batch, 3): healthy, degrading, critical",
        },
        "normalisation": "not in the graph: grace_rul scales each member's input with that "
        "member's normaliser (members[i].normalizer) and cuts the windows before the graph",
    }


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session for ``path``."""
    require("onnxruntime")
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraceError(f"{path} is corrupt or truncated ({first})") from None
