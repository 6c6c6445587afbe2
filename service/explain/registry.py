"""Method registry: name -> (kind, implementation, documented options with defaults).

Options are validated here so every method reports the same kind of message: the option's
name, what it got and the allowed range; unknown names list the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models_store.errors import ProblemError

Kind = Literal["cam", "gradient", "perturbation"]
# How a method's map reads, which sets its rendering defaults (service/pipeline/heatmaps.py,
# docs/methods.md "Rendering defaults"): a CAM-like map of where the evidence is; the
# magnitude of a gradient (sign-free, heavy-tailed); or a signed attribution that adds up to
# a score difference (evidence for and against).
Picture = Literal["cam", "magnitude", "signed"]
_PICTURE_OF_KIND: dict[Kind, Picture] = {
    "cam": "cam",
    "gradient": "magnitude",
    "perturbation": "cam",
}


@dataclass
class MethodOutput:
    """What a method returns (see :func:`service.explain.run_method`)."""

    kind: Kind
    maps: list[np.ndarray]
    scores: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    # "layer": one (R, h, w) map per layer; "input": one (R, C|1, H, W) attribution
    resolution: Literal["layer", "input"] = "layer"
    # the class explained in each row (R,): rank targets resolved; run_method fills it in
    targets: np.ndarray | None = None


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


MethodFn = Callable[..., MethodOutput]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    fn: MethodFn
    options: dict[str, Option]
    doc: str
    uses_layers: bool = True
    # accepts rank targets (service/explain/targets.py) and resolves them from the run it
    # makes anyway: its first run sees the posted rows themselves (not SmoothGrad's noisy
    # copies, not IG's path, not occlusion's)
    ranked: bool = False
    picture: Picture = "cam"

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}


METHODS: dict[str, Method] = {}


def register(
    name: str,
    kind: Kind,
    options: dict[str, Option],
    *,
    uses_layers: bool = True,
    ranked: bool = False,
    picture: Picture | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """``picture`` defaults from ``kind``: cam -> cam, gradient -> magnitude, perturbation ->
    cam (Score-CAM, Ablation-CAM); signed attributions say ``picture="signed"``."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = Method(
            name,
            kind,
            fn,
            dict(options),
            (fn.__doc__ or "").strip(),
            uses_layers,
            ranked,
            picture or _PICTURE_OF_KIND[kind],
        )
        return fn

    return deco


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ProblemError(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None


def resolve_options(method: Method, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with ``options``, each value checked; unknown names are an error."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        valid = ", ".join(sorted(method.options)) or "none"
        raise ProblemError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {method.name!r}; "
            f"valid options: {valid}"
        )
    resolved = {}
    for name, opt in method.options.items():
        value = options.get(name, opt.default)
        resolved[name] = value if value is None and opt.default is None else opt.check(name, value)
    return resolved


# -- checkers -------------------------------------------------------------------------------


def _bad(name: str, value: Any, allowed: str) -> ProblemError:
    return ProblemError(f"options.{name} must be {allowed}, got {value!r}")


def integer(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _bad(name, value, f"an integer in [{lo}, {hi}]")
        if not lo <= int(value) <= hi:
            raise _bad(name, value, f"an integer in [{lo}, {hi}]")
        return int(value)

    return check


def number(lo: float, hi: float, *, open_lo: bool = False) -> Callable[[str, Any], float]:
    left = "(" if open_lo else "["

    def check(name: str, value: Any) -> float:
        allowed = f"a number in {left}{lo}, {hi}]"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise _bad(name, value, allowed)
        v = float(value)
        if not np.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
            raise _bad(name, value, allowed)
        return v

    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, value, "true or false")
    return value


def choice(*values: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in values:
            raise _bad(name, value, "one of " + ", ".join(repr(v) for v in values))
        return str(value)

    return check


def pair(lo: int, hi: int) -> Callable[[str, Any], tuple[int, int]]:
    """An int (square) or [height, width], each in [lo, hi]."""
    one = integer(lo, hi)

    def check(name: str, value: Any) -> tuple[int, int]:
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) != 2:
                raise _bad(name, value, f"an integer or [height, width], each in [{lo}, {hi}]")
            return one(name, value[0]), one(name, value[1])
        v = one(name, value)
        return v, v

    return check


def number_or_choice(lo: float, hi: float, *values: str) -> Callable[[str, Any], float | str]:
    num = number(lo, hi)

    def check(name: str, value: Any) -> float | str:
        if isinstance(value, str):
            if value in values:
                return value
        else:
            try:
                return num(name, value)
            except ProblemError:
                pass
        allowed = " or ".join([*(repr(v) for v in values), f"a number in [{lo}, {hi}]"])
        raise _bad(name, value, allowed)

    return check


BATCH_SIZE = Option(None, integer(1, 4096), "rows per onnxruntime run (default: all at once)")
PERTURBATION_BATCH = Option(32, integer(1, 4096), "perturbed inputs per onnxruntime run")
FUSION = Option(
    "mean",
    choice("mean", "max", "product"),
    "how the caller fuses several layers' maps (see cam.fuse_maps); maps stay per layer here",
)
