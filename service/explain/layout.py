"""The methods' NCHW view of a model whose input or layer tensors use another axis order.

The explanation methods work on canonical tensors: input rows (R, C, H, W) and layer tensors
(R, K, h, w). A Keras model exported by tf2onnx takes (N, H, W, C) and may hold layer tensors
either way round (tf2onnx keeps Conv in ONNX's NCHW and inserts Transposes, sometimes leaving
NHWC tensors before the pooling). :class:`CanonicalRunner` wraps a
:class:`~service.runtime.runner.ModelRunner` and translates at the boundary, so every method,
unchanged, sees canonical tensors:

* inputs are transposed from NCHW to the model's input layout before each run, and the input
  gradient back to NCHW;
* layer activations and gradients come back in NCHW whatever the layer's layout
  (``layer_layouts``, from :func:`models_store.inspect.tensor_layouts`), and activations
  handed back to the graph (ablation's head, its channel masks) go back to the layer's layout.

Token models (docs/methods.md, "Token models"): a (N, L, C) token layer with a patch grid
(``token_grids``, from :func:`models_store.inspect.token_grids`) comes back as (N, C, h, w):
the extra tokens (the class token) dropped, the patch tokens reshaped row-major to the grid,
as pytorch-grad-cam's ViT ``reshape_transform``. Going back to the graph is only possible for
masks: a channel mask (R, K, 1, 1) becomes (R, 1, K) and switches channel k off in every
token, the class token included (pytorch-grad-cam's ``AblationLayerVit``); a full (R, K, h, w)
mask leaves the extra tokens unmasked. The head cannot be run from a grid that lost its
class token, so :meth:`CanonicalRunner.can_split` is False on token layers and ablation runs
the masked full forward.

Where everything is NCHW the wrapper passes arrays through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models_store.errors import ProblemError
from models_store.inspect import NCHW, TokenGrid, from_canonical, to_canonical
from service.runtime.runner import Gradients, ModelRunner

__all__ = ["CanonicalRunner"]


def _move(a: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    if perm == (0, 1, 2, 3):
        return a
    if a.ndim != 4:
        raise ProblemError(f"expected a rank-4 tensor to reorder, got shape {a.shape}")
    return np.ascontiguousarray(a.transpose(perm))


# a ModelRunner to the type checker (the methods are typed against it); at run time a plain
# wrapper whose every other attribute (model, provider, score_output, ...) is the inner one's
_Base = ModelRunner if TYPE_CHECKING else object


class CanonicalRunner(_Base):  # type: ignore[misc,valid-type]
    """A :class:`ModelRunner` that takes and returns NCHW tensors (see the module docstring).

    It delegates every run to ``inner``; it holds no graph or session of its own."""

    def __init__(
        self,
        inner: ModelRunner,
        input_layout: str = NCHW,
        layer_layouts: Mapping[str, str] | None = None,
        token_grids: Mapping[str, TokenGrid] | None = None,
    ) -> None:
        self.inner = inner
        self.input_layout = input_layout
        self.layer_layouts = dict(layer_layouts or {})
        self.token_grids = dict(token_grids or {})

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        return getattr(self.inner, name)

    # -- layouts ----------------------------------------------------------------------------

    def layer_layout(self, layer: str) -> str:
        """The axis order of ``layer`` in the graph (NCHW unless the graph says otherwise)."""
        return self.layer_layouts.get(layer, NCHW)

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """NCHW rows -> the model's input layout."""
        return _move(np.asarray(x), from_canonical(self.input_layout))

    def from_model(self, x: np.ndarray) -> np.ndarray:
        """A tensor in the model's input layout (e.g. the input gradient) -> NCHW."""
        return _move(np.asarray(x), to_canonical(self.input_layout))

    def layer_to_nchw(self, layer: str, a: np.ndarray) -> np.ndarray:
        grid = self.token_grids.get(layer)
        if grid is not None:
            return _tokens_to_grid(layer, grid, np.asarray(a))
        return _move(np.asarray(a), to_canonical(self.layer_layout(layer)))

    def layer_from_nchw(self, layer: str, a: np.ndarray) -> np.ndarray:
        if layer in self.token_grids:
            raise ProblemError(
                f"layer {layer!r} is a token tensor read as its patch grid; the grid has lost "
                "the extra (class) tokens, so it cannot be fed back to the graph"
            )
        return _move(np.asarray(a), from_canonical(self.layer_layout(layer)))

    # -- runs -------------------------------------------------------------------------------

    def num_classes(self, x: np.ndarray | None = None) -> int:
        return self.inner.num_classes(None if x is None else self.to_model(x))

    def forward(
        self, x: np.ndarray, extra: Sequence[str] = (), batch_size: int | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        scores, acts = self.inner.forward(self.to_model(x), extra, batch_size)
        return scores, [self.layer_to_nchw(n, a) for n, a in zip(extra, acts, strict=True)]

    def gradients(
        self,
        x: np.ndarray,
        seed: np.ndarray,
        layers: Sequence[str] = (),
        *,
        rule: str = "standard",
        input_gradient: bool = False,
        batch_size: int | None = None,
    ) -> Gradients:
        layers = tuple(layers)
        res = self.inner.gradients(
            self.to_model(x),
            seed,
            layers,
            rule=rule,
            input_gradient=input_gradient,
            batch_size=batch_size,
        )
        return self._canonical(res, layers)

    def can_split(self, layer: str) -> bool:
        return layer not in self.token_grids and self.inner.can_split(layer)

    def split_point(self, layers: Sequence[str]) -> str | None:
        if any(layer in self.token_grids for layer in layers):
            return None  # a grid without its class token cannot be fed back
        return self.inner.split_point(layers)

    def head_gradients(
        self,
        cut: str,
        activation: np.ndarray,
        seed: np.ndarray,
        layers: Sequence[str],
        *,
        rule: str = "standard",
        batch_size: int | None = None,
    ) -> Gradients:
        res = self.inner.head_gradients(
            cut,
            self.layer_from_nchw(cut, activation),
            seed,
            layers,
            rule=rule,
            batch_size=batch_size,
        )
        return self._canonical(res, layers)

    def _canonical(self, res: Gradients, layers: Sequence[str]) -> Gradients:
        return Gradients(
            score=res.score,
            activations=[
                self.layer_to_nchw(n, a) for n, a in zip(layers, res.activations, strict=True)
            ],
            gradients=[
                self.layer_to_nchw(n, g) for n, g in zip(layers, res.gradients, strict=True)
            ],
            input_gradient=None
            if res.input_gradient is None
            else self.from_model(res.input_gradient),
        )

    def forward_from(
        self, layer: str, activation: np.ndarray, batch_size: int | None = None
    ) -> np.ndarray:
        return self.inner.forward_from(layer, self.layer_from_nchw(layer, activation), batch_size)

    def forward_masked(
        self, x: np.ndarray, layer: str, mask: np.ndarray, batch_size: int | None = None
    ) -> np.ndarray:
        mask = np.asarray(mask)
        grid = self.token_grids.get(layer)
        if grid is not None and mask.ndim == 4:
            mask = _grid_mask_to_tokens(grid, mask)
        elif mask.ndim == 4:
            mask = self.layer_from_nchw(layer, mask)
        return self.inner.forward_masked(self.to_model(x), layer, mask, batch_size)


def _tokens_to_grid(layer: str, grid: TokenGrid, a: np.ndarray) -> np.ndarray:
    """(R, L, C) tokens -> (R, C, h, w): the extra tokens dropped, the patches row-major."""
    if a.ndim != 3 or a.shape[1] != grid.tokens:
        raise ProblemError(
            f"layer {layer!r} was expected to hold {grid.tokens} tokens ({grid.prefix} extra, "
            f"a {grid.height}x{grid.width} grid, {grid.suffix} after), got shape "
            f"{tuple(a.shape)}"
        )
    patches = a[:, grid.prefix : grid.prefix + grid.height * grid.width, :]
    r, _, c = patches.shape
    return np.ascontiguousarray(
        patches.reshape(r, grid.height, grid.width, c).transpose(0, 3, 1, 2)
    )


def _grid_mask_to_tokens(grid: TokenGrid, mask: np.ndarray) -> np.ndarray:
    """An NCHW mask -> one for the (R, L, C) token tensor (module docstring)."""
    r, k, h, w = mask.shape
    if (h, w) == (1, 1):  # per channel: every token, the extra ones included
        return np.ascontiguousarray(mask.reshape(r, 1, k))
    if (h, w) != (grid.height, grid.width):
        raise ProblemError(f"a mask of shape {mask.shape} does not fit the token grid")
    out = np.ones((r, grid.tokens, k), dtype=mask.dtype)
    out[:, grid.prefix : grid.prefix + h * w, :] = mask.transpose(0, 2, 3, 1).reshape(r, h * w, k)
    return out
