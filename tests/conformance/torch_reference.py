"""Reference gradients from torch autograd, in float64 (the truth) and float32 (torch's own
rounding, which sets the allowance), with the ReLU rules applied at every rectifier.

:class:`RectifierRule` is a ``TorchFunctionMode`` that routes every rectifier a model calls
— ``nn.ReLU`` / ``F.relu`` / ``torch.relu`` / ``relu_`` / ``Tensor.relu``, and ``nn.ReLU6`` /
``F.relu6`` / ``F.hardtanh`` with ``min_val == 0`` — through :class:`Rectifier`, whose backward
is the requested rule. Hooking ``nn.ReLU`` modules only (as Captum does) would miss the
functional ReLUs of GoogLeNet, Inception and DenseNet's head and every ReLU6. The rules, with
M the upper bound (infinite for ReLU):

- standard: ``g * (0 < x < M)`` (torch's own relu / hardtanh backward, strict bounds)
- guided: ``g * (0 < x < M) * (g > 0)``
- deconvnet: ``relu(g) * (x < M)``
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("standard", "guided", "deconvnet")


class Rectifier(torch.autograd.Function):
    """clamp(x, 0, upper) whose backward is the given rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float, rule: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        ctx.rule = rule
        return x.clamp(min=0) if math.isinf(upper) else x.clamp(0, upper)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        below_top = x < ctx.upper
        if ctx.rule == "deconvnet":
            return g.clamp(min=0) * below_top, None, None
        inside = (x > 0) & below_top
        if ctx.rule == "guided":
            return g * inside * (g > 0), None, None
        return g * inside, None, None


_RELUS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
}
_HARDTANHS = {F.hardtanh, F.hardtanh_}


class RectifierRule(TorchFunctionMode):
    """Apply ``rule`` at every ReLU and every clip to [0, M] (ReLU6) the model calls.

    In-place variants return a new tensor instead (torchvision uses their return values), so
    that autograd never sees a saved tensor modified in place. ``count`` says how many
    rectifiers were intercepted.
    """

    def __init__(self, rule: str) -> None:
        super().__init__()
        assert rule in RULES, rule
        self.rule = rule
        self.count = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELUS:
            self.count += 1
            return Rectifier.apply(args[0], math.inf, self.rule)
        if func is F.relu6:
            self.count += 1
            return Rectifier.apply(args[0], 6.0, self.rule)
        if func in _HARDTANHS:
            bound = dict(zip(("min_val", "max_val"), args[1:3], strict=False))
            bound.update({k: v for k, v in kwargs.items() if k in ("min_val", "max_val")})
            low, high = bound.get("min_val", -1.0), bound.get("max_val", 1.0)
            if low == 0:
                self.count += 1
                return Rectifier.apply(args[0], float(high), self.rule)
        return func(*args, **kwargs)


# A float64 max-pool window whose two largest inputs are closer than this (relative to the
# pooled tensor's largest magnitude) is a near-tie: float32 rounding in any implementation may
# pick either, so the gradient's route there is the forward's choice, not a property of the
# companion graph (docs/companion.md, "the Inception finding").
NEAR_TIE = 1e-6
_MAX_POOLS = {F.max_pool2d, torch.max_pool2d, F.max_pool2d_with_indices}


class ForwardChoices(TorchFunctionMode):
    """Max pools and ReLUs that follow another forward's choices at near-ties.

    ``pools[k]`` / ``relus[k]`` are the inputs of the k-th max pool / ReLU as that forward
    (onnxruntime's float32) computed them; None, another shape, or values that are not the
    same tensor's (off by more than 1e-3 of its largest) leave that call alone. A max-pool
    window whose float64 top two are a near-tie takes the element the other forward picked; a
    ReLU input within a near-tie of 0 takes the other forward's sign. ``aligned`` counts the
    decisions that moved, ``refused`` those where the two disagree by more than a near-tie (a
    real difference, left as it is).
    """

    def __init__(self, pools: list[np.ndarray | None], relus: list[np.ndarray | None]) -> None:
        super().__init__()
        self.pools, self.relus = pools, relus
        self.calls = {"pool": 0, "relu": 0}
        self.aligned = 0
        self.refused = 0

    def _theirs(self, kind: str, x: torch.Tensor) -> torch.Tensor | None:
        k = self.calls[kind]
        self.calls[kind] += 1
        chosen = self.pools if kind == "pool" else self.relus
        if k >= len(chosen) or chosen[k] is None or tuple(chosen[k].shape) != tuple(x.shape):
            return None
        other = torch.from_numpy(chosen[k]).to(x.dtype)
        scale = float(x.detach().abs().max())
        if float((other - x.detach()).abs().max()) > 1e-3 * scale:
            return None  # not the same tensor: the call orders do not match here
        return other

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _RELUS:
            x = args[0]
            other = self._theirs("relu", x)
            if other is None:
                return func(*args, **kwargs)
            near = x.detach().abs() <= NEAR_TIE * float(x.detach().abs().max())
            differ = (x.detach() > 0) != (other > 0)
            self.aligned += int((differ & near).sum())
            self.refused += int((differ & ~near).sum())
            keep = torch.where(differ & near, other > 0, x.detach() > 0)
            return x * keep.to(x.dtype)
        if func not in _MAX_POOLS:
            return func(*args, **kwargs)
        kwargs.pop("return_indices", None)
        x = args[0]
        out, ours = F.max_pool2d_with_indices(*args, **kwargs)
        other = self._theirs("pool", x) if x.ndim == 4 else None
        if other is None:
            return out
        _, theirs = F.max_pool2d_with_indices(other, *args[1:], **kwargs)
        flat = x.flatten(2)
        gap = (flat.gather(2, ours.flatten(2)) - flat.gather(2, theirs.flatten(2))).abs()
        near = gap <= NEAR_TIE * float(x.detach().abs().max())
        differ = ours.flatten(2) != theirs.flatten(2)
        self.aligned += int((differ & near).sum())
        self.refused += int((differ & ~near).sum())
        index = torch.where(differ & near, theirs.flatten(2), ours.flatten(2))
        return flat.gather(2, index).view_as(out)


def decision_inputs(model: onnx.ModelProto, op: str) -> list[str]:
    """The input of every ``op`` node (MaxPool, Relu), in graph order: the order torch calls
    them in a traced export."""
    return [n.input[0] for n in model.graph.node if n.op_type == op]


def forward_choices(
    open_session: Callable[[onnx.ModelProto], Any], model: onnx.ModelProto, x: np.ndarray
) -> ForwardChoices:
    """onnxruntime's max-pool and ReLU decisions on ``x``, for a float64 reference."""
    pools, relus = decision_inputs(model, "MaxPool"), decision_inputs(model, "Relu")
    values = ort_values(open_session, model, pools + relus, x)
    return ForwardChoices(values[: len(pools)], values[len(pools) :])


def ort_values(
    open_session: Callable[[onnx.ModelProto], Any],
    model: onnx.ModelProto,
    names: list[str],
    x: np.ndarray,
) -> list[np.ndarray | None]:
    """onnxruntime's float32 forward values of the tensors ``names`` on ``x``, in a session
    opened by ``open_session`` (the harness's own options)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = open_session(probe)
    values = session.run(names, {session.get_inputs()[0].name: x})
    return [np.asarray(v) for v in values]


@dataclass
class Reference:
    logits: np.ndarray
    mid_activation: np.ndarray | None
    input_gradient: np.ndarray
    mid_gradient: np.ndarray | None
    rectifiers: int  # how many rectifiers the rule was applied at (0 for plain autograd)


def gradients(
    module: torch.nn.Module,
    x: np.ndarray,
    seed: np.ndarray,
    mid: str | None,
    rule: str,
    dtype: torch.dtype,
    pools: ForwardChoices | None = None,
) -> Reference:
    """d sum(seed * logits) / d(image) and / d(output of module ``mid``), in ``dtype``.

    ``rule="standard"`` is plain torch autograd (no mode); the others run under
    :class:`RectifierRule`. ``pools``: max pools follow its choices at near-ties.
    ``module`` is not modified (a float64 copy is made if asked).
    """
    net = module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)
    net.eval()
    captured: dict[str, torch.Tensor] = {}
    hook = None
    if mid is not None:
        hook = net.get_submodule(mid).register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("mid", out)
        )
    try:
        xt = torch.from_numpy(x).to(dtype).requires_grad_()
        mode = RectifierRule(rule) if rule != "standard" else None
        with contextlib.ExitStack() as modes:
            if pools is not None:
                modes.enter_context(pools)
            if mode is not None:
                modes.enter_context(mode)
            logits = net(xt)
        wrt = [xt] + ([captured["mid"]] if mid is not None else [])
        score = (logits * torch.from_numpy(seed).to(dtype)).sum()
        grads = torch.autograd.grad(score, wrt)
    finally:
        if hook is not None:
            hook.remove()
    mid_act = captured["mid"].detach().numpy().copy() if mid is not None else None
    return Reference(
        logits=logits.detach().numpy().copy(),
        mid_activation=mid_act,
        input_gradient=grads[0].numpy().copy(),
        mid_gradient=grads[1].numpy().copy() if mid is not None else None,
        rectifiers=0 if mode is None else mode.count,
    )
