"""Feature-map tiles and statistics for chosen layers, and convolution-kernel mosaics."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

from models_store.errors import LayerNotFound, ProblemError
from models_store.fold import fold_constants
from models_store.store import ModelRecord
from schemas.activations import (
    ActivationResult,
    ActivationsRequest,
    ChannelStats,
    LayerStats,
)
from schemas.explain import TopK
from service.imaging.preprocess import preprocess
from service.imaging.render import encode_png, to_base64
from service.imaging.tiles import filter_mosaic, tile_grid
from service.pipeline.explain import resolve_layers
from service.pipeline.layout import canonical_runner, input_plan
from service.state import AppState


def activations(
    state: AppState, record: ModelRecord, body: ActivationsRequest, images: list[Image.Image]
) -> tuple[list[ActivationResult], str]:
    layers = resolve_layers(state, record, body.layers)
    summary = state.summary(record)
    for name in layers:
        layer = summary.layer(name)
        if len(layer.shape) != 4 and layer.grid is None:
            raise ProblemError(f"layer {name!r} is not a (N, C, h, w) feature map")
    # NCHW rows in, (N, C, h, w) maps out whatever the layouts of the input and the layers
    # (a token layer comes back as its patch grid, the class token dropped)
    runner = canonical_runner(state, record)
    x = preprocess(images, input_plan(record).nchw)
    _, maps = runner.forward(x, extra=layers)
    results = []
    for i in range(len(images)):
        for name, batch in zip(layers, maps, strict=True):
            results.append(_one(i, name, batch[i], body))
    return results, runner.provider


def _one(image: int, layer: str, a: np.ndarray, body: ActivationsRequest) -> ActivationResult:
    channels = a.shape[0]
    means = a.reshape(channels, -1).mean(axis=1)
    if body.channels == "all":
        chosen = list(range(channels))
    elif isinstance(body.channels, TopK):
        chosen = [int(c) for c in np.argsort(-means, kind="stable")[: body.channels.top_k]]
    else:
        bad = [c for c in body.channels if not 0 <= c < channels]
        if bad:
            raise ProblemError(f"channels {bad} are out of range 0..{channels - 1} for {layer!r}")
        chosen = list(body.channels)
    result = ActivationResult(image=image, layer=layer, shape=list(a.shape), channels=chosen)
    if "tiles" in body.outputs:
        r = body.render
        grid = tile_grid(
            [a[c] for c in chosen],
            columns=r.columns,
            tile_size=r.tile_size,
            colormap=r.colormap,
            normalize=r.normalize,
            labels=[str(c) for c in chosen],
            title=layer,
        )
        result.tiles = to_base64(encode_png(grid))
    if "stats" in body.outputs:
        flat = a.reshape(channels, -1)
        zeros = (flat == 0).mean(axis=1)
        result.stats = LayerStats(
            mean=float(a.mean()),
            max=float(a.max()),
            sparsity=float((a == 0).mean()),
            per_channel=[
                ChannelStats(
                    index=c,
                    mean=float(means[c]),
                    max=float(flat[c].max()),
                    sparsity=float(zeros[c]),
                )
                for c in chosen
            ],
        )
    return result


def conv_weights(model: onnx.ModelProto, layer: str) -> tuple[str, str, np.ndarray]:
    """Find a Conv by node name, weight name or output tensor; return (node, weight, W)."""
    folded = fold_constants(model)
    weights = {t.name: t for t in folded.graph.initializer}
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    for node in convs:
        if layer in (node.name, node.input[1], node.output[0]):
            if node.input[1] not in weights:
                raise ProblemError(f"the weights of Conv {node.name!r} are computed at run time")
            array = numpy_helper.to_array(weights[node.input[1]])
            return node.name or node.output[0], node.input[1], array
    names = ", ".join(repr(n.name or n.output[0]) for n in convs[:5])
    raise LayerNotFound(
        f"no Conv node, weight or output named {layer!r}; Conv nodes include {names}"
    )


def filters_png(
    model: onnx.ModelProto, layer: str, columns: int, tile_size: int, reduce: str
) -> tuple[str, str, list[int], bytes]:
    node, weight, array = conv_weights(model, layer)
    mosaic = filter_mosaic(array, columns=columns, tile_size=tile_size, reduce=reduce)  # type: ignore[arg-type]
    return node, weight, list(array.shape), encode_png(mosaic)
