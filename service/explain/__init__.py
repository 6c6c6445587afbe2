"""Explanation methods on numpy arrays (no HTTP): CAM family, gradient maps, perturbations.

Entry point :func:`run_method`. Inputs are preprocessed NCHW rows, one per (image, target);
the methods run through a :class:`service.runtime.runner.ModelRunner`, wrapped in a
:class:`~service.explain.layout.CanonicalRunner` for models whose input or layers are not
NCHW (NHWC Keras exports). Formulas, papers, options and conventions: docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models_store.errors import ProblemError
from service.runtime.runner import ModelRunner

from . import cam as _cam  # noqa: F401  (registers the methods)
from . import gradients as _gradients  # noqa: F401
from . import perturbation as _perturbation  # noqa: F401
from .cam import fuse_maps
from .layout import CanonicalRunner
from .registry import METHODS, Method, MethodOutput, get_method, resolve_options
from .targets import has_ranks, resolve_ranks

__all__ = [
    "METHODS",
    "CanonicalRunner",
    "Method",
    "MethodOutput",
    "fuse_maps",
    "get_method",
    "method_defaults",
    "run_method",
]


def method_defaults(method: str) -> dict[str, Any]:
    return get_method(method).defaults()


def run_method(
    method: str,
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any] | None = None,
) -> MethodOutput:
    """Run ``method`` on rows ``x`` (R, C, H, W), NCHW, already preprocessed and expanded to
    one row per (image, target); ``targets[r]`` is row r's class index (validated by the
    caller) or, for a method registered ``ranked``, a rank (``targets.rank_target``); the
    output's ``targets`` are the classes explained. ``layers`` are tensor names (needed by
    the CAM family, scorecam, ablationcam and guided_gradcam; ignored by the others).

    Returns a :class:`MethodOutput`: for CAM and Score/Ablation-CAM one raw (R, h, w) float32
    map per layer at layer resolution (no ReLU, no normalisation); for gradient methods one
    (R, C, H, W) attribution at input resolution; for occlusion one (R, 1, H, W); ``scores``
    are the (R, classes) logits; ``extras`` e.g. ``completeness_gap`` for IG. Options are
    validated against the method's documented defaults (unknown names are an error).
    """
    spec = get_method(method)
    opts = resolve_options(spec, options)
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 4:
        raise ProblemError(f"expected NCHW rows (R, C, H, W), got shape {x.shape}")
    if len(targets) != x.shape[0]:
        raise ProblemError(f"{len(targets)} targets for {x.shape[0]} rows")
    layers = tuple(layers)
    if spec.uses_layers and not layers:
        raise ProblemError(f"method {method!r} needs at least one layer")
    targets = [int(t) for t in targets]
    if has_ranks(targets) and not spec.ranked:
        raise ValueError(f"method {method!r} takes class indices, not ranks")
    output = spec.fn(runner, x, targets, layers, opts)
    if output.targets is None:  # ranks the method left to its (only) run's scores
        output.targets = resolve_ranks(targets, output.scores)
    return output
