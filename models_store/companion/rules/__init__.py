"""Gradient rules, one module per op family. Importing this package registers them all in
``models_store.companion.context.REGISTRY`` (keyed by op type, duplicates refused)."""

from . import activation, conv, elementwise, linear, normalization, pool, shape

__all__ = ["activation", "conv", "elementwise", "linear", "normalization", "pool", "shape"]
