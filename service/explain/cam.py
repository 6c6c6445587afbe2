"""The CAM family: a map at the layer's resolution, ``cam = sum_k w_k * A_k`` or a variant.

Each gradient-based method is a plain function ``(A, G) -> cam`` on arrays of shape
(R, K, h, w) -> (R, h, w), registered by name in :data:`CAM_FUNCTIONS`; they share one runner
call (activations and gradients of every requested layer in one companion-graph run). Maps are
returned raw: no ReLU, no normalisation, no resizing (that is rendering's job).

Formulas and conventions follow pytorch-grad-cam (the parity reference); docs/methods.md has
the papers and the choices made where libraries disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from models_store.errors import UnsupportedModel
from service.imaging.render import resize_map
from service.runtime.runner import Gradients, ModelRunner

from .registry import BATCH_SIZE, FUSION, MethodOutput, register
from .targets import TOP_CLASS, distinct_rows, resolve_ranks

CamFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
CAM_FUNCTIONS: dict[str, CamFn] = {}

GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's
XGRADCAM_EPS = 1e-7


def cam_function(name: str) -> Callable[[CamFn], CamFn]:
    def deco(fn: CamFn) -> CamFn:
        CAM_FUNCTIONS[name] = fn
        return fn

    return deco


def _weighted(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.einsum("rk,rkhw->rhw", w, a)


@cam_function("gradcam")
def gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean_s(G_k)."""
    return _weighted(g.mean(axis=(2, 3)), a)


@cam_function("hirescam")
def hirescam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): cam = sum_k G_k * A_k, no spatial pooling."""
    return (g * a).sum(axis=1)


@cam_function("gradcam_elementwise")
def gradcam_elementwise(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Element-wise Grad-CAM: cam = sum_k relu(G_k * A_k)."""
    return np.maximum(g * a, 0.0).sum(axis=1)


@cam_function("gradcampp")
def gradcampp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential head's identities):
    alpha = G^2 / (2 G^2 + sum_s(A) G^3 + eps), alpha = 0 where G = 0;
    w_k = sum_s(relu(G_k) * alpha_k)."""
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(axis=(2, 3), keepdims=True)
    alpha = g2 / (2.0 * g2 + sum_a * g3 + GRADCAMPP_EPS)
    alpha = np.where(g != 0, alpha, 0.0)
    w = (np.maximum(g, 0.0) * alpha).sum(axis=(2, 3))
    return _weighted(w, a)


@cam_function("xgradcam")
def xgradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020): w_k = sum_s(G_k A_k) / (sum_s(A_k) + eps)."""
    w = (g * a).sum(axis=(2, 3)) / (a.sum(axis=(2, 3)) + XGRADCAM_EPS)
    return _weighted(w, a)


@cam_function("layercam")
def layercam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): cam = sum_k relu(G_k) * A_k."""
    return (np.maximum(g, 0.0) * a).sum(axis=1)


def first_component(t: np.ndarray) -> np.ndarray:
    """Per row: the (hw x K) matrix, mean-centred over positions, projected on its first right
    singular vector (pytorch-grad-cam's ``get_2d_projection``).

    The projection is ``s_1 u_1``, the top eigenvector of the smaller Gram matrix (hw x hw or
    K x K) scaled by the square root of its eigenvalue: a 49 x 49 ``eigh`` instead of a
    49 x 2048 SVD (0.5 ms instead of 14-20 ms for resnet50's last layer). A singular vector's
    sign is arbitrary (LAPACK's choice in pytorch-grad-cam); ours is fixed: the map correlates
    positively with the channel sum of the centred matrix (for Eigen-CAM, where the layer is
    more active than on average), so it does not flip between runs, versions or BLAS builds.
    """
    t = np.nan_to_num(np.asarray(t, dtype=np.float64))
    out = np.empty((t.shape[0], *t.shape[2:]), dtype=np.float32)
    for r, item in enumerate(t):
        m = item.reshape(item.shape[0], -1).T
        m = m - m.mean(axis=0)
        if m.shape[0] <= m.shape[1]:  # s1 u1 = m v1: from the positions' Gram matrix
            values, vectors = np.linalg.eigh(m @ m.T)
            p = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        else:  # from the channels' Gram matrix: v1, then m v1
            _, vectors = np.linalg.eigh(m.T @ m)
            p = m @ vectors[:, -1]
        if p @ m.sum(axis=1) < 0:
            p = -p
        out[r] = p.reshape(item.shape[1:])
    return out


@cam_function("eigengradcam")
def eigengradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Eigen-Grad-CAM: the first principal component of G * A (class-specific)."""
    return first_component(g * a)


def onehot(targets: Sequence[int] | np.ndarray, classes: int) -> np.ndarray:
    """One-hot seeds; a ``TOP_CLASS`` target leaves its row zero, which the companion graph
    reads as "seed the top-scoring class" (models_store/companion/autoseed.py)."""
    index = np.asarray(targets, dtype=np.intp)
    if index.size and index.min() < TOP_CLASS:
        raise ValueError("only TOP_CLASS is seeded in the graph; resolve other ranks first")
    seed = np.zeros((len(targets), classes), dtype=np.float32)
    rows = np.flatnonzero(index >= 0)
    seed[rows, index[rows]] = 1.0
    return seed


def layer_gradients(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    *,
    batch_size: int | None = None,
) -> tuple[Gradients, np.ndarray | None]:
    """Activations and gradients of ``layers`` for each row's target (a class or a rank), and
    the classes when they were resolved here (None: the graph seeded each row's top class).

    In as few runs as the graph allows: rows that are distinct images, each with a class or
    ``TOP_CLASS``, take one companion run. Several targets of an image (``top_k``), or ranks
    past the first, take one trunk forward per image and then only the head (the graph from
    a layer to the score, when it can be cut there with the other layers inside it), forward
    and backward, once per target: k targets cost about one forward, not k. Where no layer
    cuts the graph: a forward to resolve the ranks, then the companion run per row."""
    unique, of_row = distinct_rows(x)
    resolved = None
    if len(unique) < len(x) or any(t < TOP_CLASS for t in targets):
        cut = runner.split_point(layers)
        if cut is not None:
            scores, (acts,) = runner.forward(unique, extra=(cut,), batch_size=batch_size)
            resolved = resolve_ranks(targets, scores[of_row])
            seed = onehot(resolved, scores.shape[1])
            res = runner.head_gradients(cut, acts[of_row], seed, layers, batch_size=batch_size)
            res.score = scores[of_row]  # the scores the ranks were read from
            return res, resolved
        if any(t < TOP_CLASS for t in targets):
            scores, _ = runner.forward(unique, batch_size=batch_size)
            resolved = resolve_ranks(targets, scores[of_row])
    seed = onehot(targets if resolved is None else resolved, runner.num_classes(x))
    return runner.gradients(x, seed, layers, batch_size=batch_size), resolved


def fuse_maps(maps: Sequence[np.ndarray], mode: str = "mean") -> np.ndarray:
    """Fuse per-layer maps already brought to one size (and normalised, as the caller
    chooses): ``mean`` (pytorch-grad-cam), ``max`` (torchcam), ``product`` (RefineCAM)."""
    stack = np.stack([np.asarray(m, dtype=np.float32) for m in maps])
    if mode == "mean":
        return stack.mean(axis=0)
    if mode == "max":
        return stack.max(axis=0)
    if mode == "product":
        return stack.prod(axis=0)
    raise ValueError(f"fusion must be mean, max or product, not {mode!r}")


CAM_OPTIONS = {"batch_size": BATCH_SIZE, "fusion": FUSION}


def _gradient_cam(name: str) -> Callable[..., MethodOutput]:
    fn = CAM_FUNCTIONS[name]

    def run(
        runner: ModelRunner,
        x: np.ndarray,
        targets: Sequence[int],
        layers: Sequence[str],
        options: dict[str, Any],
    ) -> MethodOutput:
        res, resolved = layer_gradients(
            runner, x, targets, layers, batch_size=options["batch_size"]
        )
        _check_patch_gradients(runner, layers, res.gradients)
        maps = [
            fn(a.astype(np.float64), g.astype(np.float64)).astype(np.float32)
            for a, g in zip(res.activations, res.gradients, strict=False)
        ]
        return MethodOutput("cam", maps, res.score, targets=resolved)

    run.__doc__ = fn.__doc__
    return run


def _check_patch_gradients(
    runner: ModelRunner, layers: Sequence[str], gradients: Sequence[np.ndarray]
) -> None:
    """A token layer past the last attention: only the class token reaches the score, the
    patch grid's gradient is exactly 0 and so is every gradient CAM; say so instead."""
    grids = getattr(runner, "token_grids", {})
    for layer, g in zip(layers, gradients, strict=False):
        if layer in grids and g.size and not np.any(g):
            raise UnsupportedModel(
                f"the patch tokens of token layer {layer!r} have zero gradient: past the "
                "model's last token mixing (attention) only the extra (class) token(s) reach "
                "the score, so every gradient CAM there is 0. Use a layer in front of the last "
                "attention (layer 'auto' picks one), or eigencam, which needs no gradient"
            )


for _name in (
    "gradcam",
    "hirescam",
    "gradcam_elementwise",
    "gradcampp",
    "xgradcam",
    "layercam",
    "eigengradcam",
):
    register(_name, "cam", CAM_OPTIONS, ranked=True)(_gradient_cam(_name))


@register("eigencam", "cam", CAM_OPTIONS, ranked=True)  # targets are not used
def eigencam(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of A; no gradient,
    not class-specific (the same map for every target of an image)."""
    unique, of_row = distinct_rows(x)  # one forward and one map per image
    scores, acts = runner.forward(unique, extra=layers, batch_size=options["batch_size"])
    return MethodOutput("cam", [first_component(a)[of_row] for a in acts], scores[of_row])


# -- CAM (Zhou et al. 2016) from the classifier's weights -----------------------------------

_SPATIAL_MEAN = ("GlobalAveragePool", "ReduceMean")
_PLUMBING = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")
_SCORE_ACTIVATIONS = ("Softmax", "Sigmoid", "LogSoftmax")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def classifier_weights(
    model: onnx.ModelProto, layer: str, score: str, spatial_axes: tuple[int, ...] = (2, 3)
) -> np.ndarray:
    """W (classes, channels) of the ``layer -> GAP -> (Flatten) -> Linear -> score`` head, or
    UnsupportedModel saying which step is missing. ``spatial_axes``: where the layer tensor
    keeps H and W (2, 3 in NCHW; 1, 2 for an NHWC tensor pooled by ReduceMean; 1 for a
    (N, h*w, C) token tensor without extra tokens, pooled over its tokens)."""
    rank = 3 if len(spatial_axes) == 1 else 4
    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value", None)
            if value is not None:
                consts[node.output[0]] = value
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def fail(why: str) -> UnsupportedModel:
        return UnsupportedModel(
            f"method 'cam' needs the layer to feed GlobalAveragePool -> (Flatten) -> Linear "
            f"(Gemm or MatMul) -> score; at {layer!r} {why}. Use method 'gradcam', which "
            "works at any layer (and equals CAM up to a constant factor on such heads)."
        )

    def only_consumer(tensor: str) -> onnx.NodeProto:
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1:
            raise fail(f"tensor {tensor!r} has {len(nodes)} consumers, expected exactly one")
        return nodes[0]

    def const(name: str) -> np.ndarray | None:
        t = consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    node = only_consumer(layer)
    if node.op_type not in _SPATIAL_MEAN:
        raise fail(f"the next op is {node.op_type}, not a global average pool")
    if node.op_type == "ReduceMean":
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1:
            c = const(node.input[1])
            axes = None if c is None else c.tolist()
        if axes is None or sorted(int(a) % rank for a in axes) != sorted(spatial_axes):
            raise fail(f"ReduceMean {node.name!r} does not average exactly the spatial axes")
    tensor = node.output[0]
    node = only_consumer(tensor)
    while node.op_type in _PLUMBING:
        tensor = node.output[0]
        node = only_consumer(tensor)
    if node.op_type == "Gemm":
        w = const(node.input[1])
        if w is None:
            raise fail("the Gemm's weight is not a constant")
        if _attr(node, "transA", 0):
            raise fail("the Gemm transposes its input")
        w = w if _attr(node, "transB", 0) else w.T
        w = w * float(_attr(node, "alpha", 1.0))
        out = node.output[0]
    elif node.op_type == "MatMul":
        w = const(node.input[1])
        if w is None or w.ndim != 2:
            raise fail("the MatMul's weight is not a constant matrix")
        w = w.T
        out = node.output[0]
        nxt = consumers.get(out, [])
        if len(nxt) == 1 and nxt[0].op_type == "Add":
            out = nxt[0].output[0]
    else:
        raise fail(f"after the pooling comes {node.op_type}, not a Linear layer")
    while out != score:
        nxt = consumers.get(out, [])
        # a trailing Softmax/Sigmoid (every Keras classifier has one): the CAM is of the
        # logit, the same pre-activation score every other method explains
        if len(nxt) != 1 or nxt[0].op_type not in (*_PLUMBING, *_SCORE_ACTIVATIONS):
            raise fail(f"the Linear layer's output {out!r} is not the score {score!r}")
        out = nxt[0].output[0]
    return np.asarray(w, dtype=np.float64)


def _spatial_axes(runner: ModelRunner, layer: str) -> tuple[int, ...]:
    grid = getattr(runner, "token_grids", {}).get(layer)
    if grid is not None:  # (N, L, C) tokens: CAM is defined when all of them are patches
        if grid.prefix or grid.suffix:
            raise UnsupportedModel(
                f"method 'cam' needs a global average pool over the layer's grid; {layer!r} "
                f"is a token tensor with {grid.prefix + grid.suffix} extra (class) token(s) "
                "besides its patch grid, so the head does not pool the grid. Use method "
                "'gradcam', which works at any layer"
            )
        return (1,)
    layout = getattr(runner, "layer_layout", lambda _: "NCHW")(layer)
    return layout.index("H"), layout.index("W")


@register("cam", "cam", CAM_OPTIONS, ranked=True)
def cam(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """CAM (Zhou et al. 2016): w_k = W_fc[c, k] for a layer that feeds GlobalAveragePool ->
    (Flatten) -> Linear; elsewhere an error suggesting gradcam."""
    weights = [
        classifier_weights(runner.model, layer, runner.score_output, _spatial_axes(runner, layer))
        for layer in layers
    ]
    unique, of_row = distinct_rows(x)
    scores, acts = runner.forward(unique, extra=layers, batch_size=options["batch_size"])
    scores = scores[of_row]
    idx = resolve_ranks(targets, scores)  # ranks from the same run
    maps = []
    for w, a in zip(weights, (a[of_row] for a in acts), strict=False):
        if w.shape[1] != a.shape[1]:
            raise UnsupportedModel(
                f"the classifier has {w.shape[1]} inputs but the layer has {a.shape[1]} "
                "channels; use method 'gradcam'"
            )
        maps.append(_weighted(w[idx], a.astype(np.float64)).astype(np.float32))
    return MethodOutput("cam", maps, scores, {"weights": [w[idx] for w in weights]}, targets=idx)


def resize_align_corners(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., h, w) with aligned corners (torch ``UpsamplingBilinear2d``)."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        w = np.zeros((n_out, n_in))
        if n_in == 1 or n_out == 1:
            w[:, 0] = 1.0
            return w
        pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
        lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
        frac = pos - lo
        w[np.arange(n_out), lo] = 1.0 - frac
        w[np.arange(n_out), lo + 1] += frac
        return w

    wy = weights(m.shape[-2], size[0])
    wx = weights(m.shape[-1], size[1])
    return np.einsum("ih,...hw,jw->...ij", wy, m, wx)


def upsample(m: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """(R, h, w) -> (R, H, W) with the rendering's OpenCV-style kernels."""
    return np.stack([resize_map(r, size, interpolation) for r in m])  # type: ignore[arg-type]
