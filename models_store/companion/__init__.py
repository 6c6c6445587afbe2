"""Companion graphs: reverse-mode differentiation of ONNX classifiers with standard ops.

``build_companion`` derives, from an ONNX model, an ordinary ONNX graph returning the score,
chosen layer activations and the vector-Jacobian product of a ``seed`` at the score with
respect to those layers (and optionally the image) in one onnxruntime run. See
docs/companion.md.
"""

from .builder import BUILDER_VERSION, BuildOptions, CompanionSpec, build_companion, forward_model
from .cache import load_or_build
from .context import REGISTRY, ReluRule

__all__ = [
    "BUILDER_VERSION",
    "REGISTRY",
    "BuildOptions",
    "CompanionSpec",
    "ReluRule",
    "build_companion",
    "forward_model",
    "load_or_build",
]
