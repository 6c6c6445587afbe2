"""One explain request, end to end: preprocess, choose targets, run the method, render.

The HTTP layer calls :func:`explain`; the numerics live in service/explain (the methods) and
service/imaging (rendering). Everything here runs in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.explain import ArrayOut, ExplainRequest, ExplainResult, Stats, Target
from service.explain import CanonicalRunner, get_method, run_method
from service.explain.targets import rank_target
from service.imaging.decode import to_8bit
from service.imaging.preprocess import (
    Geometry,
    box_to_input,
    input_window,
    preprocess_with_geometry,
    scale_box,
    to_original,
)
from service.imaging.render import (
    encode_array,
    encode_colormapped_png,
    encode_png,
    map_stats,
    overlay_map,
    to_base64,
)
from service.pipeline.heatmaps import finish, fuse_cam_layers, gradient_map
from service.pipeline.layout import canonical_runner, input_plan
from service.pipeline.limits import check_work
from service.pipeline.targets import explicit_targets, requested_k, resolve_targets
from service.scores import class_score, probabilities
from service.state import AppState

PngChoice = Literal["overlay", "heatmap"]
MAX_EXTRA_VALUES = 64  # per result; larger method intermediates are not sent


@dataclass
class Explained:
    layers: list[str]
    provider: str
    results: list[ExplainResult]
    pngs: list[bytes | None]  # with png=...: the PNG an `Accept: image/png` client gets
    timings_ms: dict[str, float]


def explain(
    state: AppState,
    record: ModelRecord,
    body: ExplainRequest,
    images: list[Image.Image],
    png: PngChoice | None = None,
) -> Explained:
    """``png``: render only that PNG per result (for ``Accept: image/png``), nothing else."""
    card = record.card
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    # canonical NCHW rows; the runner feeds the model its own layout and dtype
    x, geometries = preprocess_with_geometry(images, input_plan(record).nchw)
    runner = canonical_runner(state, record)
    layers = resolve_layers(state, record, body.layer)
    check_work(
        state.settings,
        body.method,
        body.options,
        layers,
        state.summary(record),
        (card.input.height, card.input.width),
    )
    method = get_method(body.method)
    rows = _rows(state, body, record, runner, x, method.ranked)
    timings["preprocess"] = _lap(clock)  # and target choice; every model run is "method"

    clock = time.perf_counter()
    image_of_row = np.array([i for i, _ in rows])
    output = run_method(
        body.method, runner, x[image_of_row], [t for _, t in rows], layers, body.options
    )
    scores = output.scores  # one row per (image, target), from the method's own run
    probs = probabilities(scores, card)
    timings["method"] = _lap(clock)

    clock = time.perf_counter()
    results, pngs = [], []
    for r, (i, _) in enumerate(rows):
        result, image_png = _render_row(body, output, r, images[i], geometries[i], png)
        cs = class_score(int(output.targets[r]), scores[r], probs[r], card)  # type: ignore[index]
        result.image, result.target = i, Target(**vars(cs))
        results.append(result)
        pngs.append(image_png)
    timings["render"] = _lap(clock)
    return Explained(layers, runner.provider, results, pngs, timings)


def _rows(
    state: AppState,
    body: ExplainRequest,
    record: ModelRecord,
    runner: CanonicalRunner,
    x: np.ndarray,
    ranked: bool,
) -> list[tuple[int, int]]:
    """(image, target) per result. Explicit classes need no run; top_k is handed to a ranked
    method as ranks (it reads them from its own run), others get a forward first."""
    limit = state.settings.max_top_k
    k = requested_k(body.targets, limit)
    classes = runner.num_classes(x)
    if k is None:
        per_image = explicit_targets(body.targets, len(x), classes, record.card, limit)
    elif ranked:
        per_image = [[rank_target(j) for j in range(min(k, classes))]] * len(x)
    else:
        scores, _ = runner.forward(x)
        per_image = resolve_targets(body.targets, scores, record.card, limit)
    return [(i, t) for i, image_targets in enumerate(per_image) for t in image_targets]


def resolve_layers(state: AppState, record: ModelRecord, layer: str | list[str]) -> list[str]:
    names = [layer] if isinstance(layer, str) else list(layer)
    if not names:
        raise ProblemError("layer is an empty list")
    summary = state.summary(record)
    resolved = []
    for name in names:
        if name == "auto":
            default = state.default_layer(record)
            if default is None:
                raise ProblemError(
                    "this model has no layer with spatial extent; name one from /layers"
                )
            name = default
        summary.layer(name)  # LayerNotFound names the layers endpoint
        resolved.append(name)
    return resolved


def _render_row(
    body: ExplainRequest,
    output: object,
    r: int,
    image: Image.Image,
    geometry: Geometry,
    png: PngChoice | None,
) -> tuple[ExplainResult, bytes | None]:
    render = body.render
    # CAM-like methods (the CAM family, Score-CAM, ablation) give (rows, h, w) per layer;
    # attribution methods give (rows, C, H, W) at the input
    cam_like = output.maps[0].ndim == 3  # type: ignore[attr-defined]
    input_hw = geometry.input_size
    raw: np.ndarray | None = None  # reduce=none: the (C, H, W) attribution itself
    if cam_like:
        maps = [m[r] for m in output.maps]  # type: ignore[attr-defined]
        if render.size == "feature":
            if len({m.shape for m in maps}) > 1:
                raise ProblemError(
                    "render.size=feature needs layers of one resolution; use size=input"
                )
            target_hw = maps[0].shape
        else:
            target_hw = input_hw
        fusion = str(body.options.get("fusion", "mean"))
        m = finish(fuse_cam_layers(maps, target_hw, render, fusion), render, cam_like=True)
    else:
        if render.size == "feature":
            raise ProblemError(f"render.size=feature applies to CAM methods, not {body.method}")
        attribution = output.maps[0][r]  # type: ignore[attr-defined]
        reduced = gradient_map(attribution, body.method, render)
        if reduced.ndim == 3:  # reduce=none
            raw = reduced
            reduced = gradient_map(
                attribution, body.method, render.model_copy(update={"reduce": "auto"})
            )
        m = finish(reduced, render, cam_like=False)

    original = None
    if render.size == "original":
        m = to_original(m, geometry)
        original = to_8bit(image, "RGB")

    result = ExplainResult(image=0, target=Target(index=0, label=None, score=0, probability=0))
    # only what was asked for: PNG encoding is most of the rendering time
    wanted = {png} if png else set(body.outputs)
    heat_png = overlay_png = None
    if "heatmap" in wanted:  # values outside [0, 1] (normalize=none) take the end colours
        heat_png = encode_colormapped_png(m, render.colormap)
        result.heatmap = to_base64(heat_png)
    if "overlay" in wanted:
        backdrop = np.asarray(
            original if original is not None else input_window(to_8bit(image, "RGB"), geometry)
        )
        # size=feature: blocks of the layer's cells over the input image
        blended = overlay_map(
            backdrop, m, render.colormap, render.alpha, nearest=render.size == "feature"
        )
        overlay_png = encode_png(blended)
        result.overlay = to_base64(overlay_png)
    if png:
        return result, heat_png if png == "heatmap" else overlay_png
    if "array" in wanted:
        result.array = ArrayOut(**encode_array(raw if raw is not None else m))
    if "stats" in wanted:
        box = None
        if body.roi is not None:
            box = (
                body.roi.box if render.size == "original" else box_to_input(body.roi.box, geometry)
            )
            if render.size == "feature":
                box = scale_box(box, input_hw, m.shape)
        result.stats = Stats(**map_stats(m, box))
    result.extras = _row_extras(output.extras, r, len(output.scores))  # type: ignore[attr-defined]
    return result, None


def _row_extras(extras: dict[str, object], r: int, rows: int) -> dict[str, object] | None:
    """Row ``r``'s share of a method's extras, as JSON values; large arrays (a method's
    intermediate maps or per-channel weights) stay out of the response."""
    out = {}
    for key, value in extras.items():
        item = _row_value(value, r, rows)
        if item is not None:
            out[key] = item
    return out or None


def _row_value(value: object, r: int, rows: int) -> object:
    if (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value)
    ):  # one array per layer
        items = [_row_value(v, r, rows) for v in value]
        return None if any(i is None for i in items) else items
    if isinstance(value, np.ndarray):
        item = value[r] if value.ndim >= 1 and value.shape[0] == rows else value
        return item.tolist() if item.size <= MAX_EXTRA_VALUES else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _lap(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
