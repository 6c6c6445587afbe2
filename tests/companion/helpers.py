"""Shared by the companion tests: building with the emitted-graph scan, sessions, tolerances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models_store.companion import CompanionSpec, build_companion

FORBIDDEN_OPS = {"ScatterElements", "ScatterND", "Scatter"}
STANDARD_DOMAINS = {"", "ai.onnx"}


def scan_emitted(companion: onnx.ModelProto, source_opset: int) -> list[str]:
    """Everything about an emitted graph that the companion contract forbids."""
    problems = []
    opsets = {o.domain: o.version for o in companion.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != max(source_opset, 13):
        problems.append(f"opset {opsets} differs from the source's {source_opset}")
    for node in companion.graph.node:
        where = f"{node.op_type} {node.name!r}"
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"{where}: non-standard domain {node.domain!r}")
        if node.op_type in FORBIDDEN_OPS:
            problems.append(f"{where}: scatter op")
        if node.op_type == "ConvTranspose":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            auto_pad = attrs.get("auto_pad", b"NOTSET")
            if auto_pad not in (b"NOTSET", "NOTSET"):
                problems.append(f"{where}: auto_pad {auto_pad!r}")
            pads = list(attrs.get("pads", []))
            half = len(pads) // 2
            if pads[:half] != pads[half:]:
                problems.append(f"{where}: asymmetric pads {pads}")
    return problems


def build_checked(
    model: onnx.ModelProto, layers: Sequence[str] = (), **kwargs: Any
) -> tuple[onnx.ModelProto, CompanionSpec]:
    """build_companion, then the checker and the contract scan on what it emitted."""
    companion, spec = build_companion(model, layers, **kwargs)
    if companion.ByteSize() < 1_800_000_000:
        onnx.checker.check_model(companion)
    source_opset = next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
    problems = scan_emitted(companion, source_opset)
    assert not problems, problems
    return companion, spec


def session(model: onnx.ModelProto | bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max|ref| (the issue's criterion)."""
    scale = float(np.abs(ref).max())
    return float(np.abs(ours - ref).max()) / (scale if scale > 0 else 1.0)


class GuidedRelu(torch.autograd.Function):
    """ReLU whose backward is guided backprop's rule: g * (y > 0) * (g > 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return g * (y > 0) * (g > 0)


class DeconvRelu(torch.autograd.Function):
    """ReLU whose backward is the deconvnet's rule: relu(g)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.clamp(min=0)


class GuidedRelu6(torch.autograd.Function):
    """ReLU6 whose backward is guided backprop's rule: g * (0 < x < 6) * (g > 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < 6)) * (g > 0)


class DeconvRelu6(torch.autograd.Function):
    """ReLU6 whose backward is the deconvnet's rule: relu(g), still blocked above 6."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x < 6)
