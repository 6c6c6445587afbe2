"""One explain request, end to end: preprocess, choose targets, run the method, render.

The HTTP layer calls :func:`explain`; the numerics live in service/explain (the methods) and
service/imaging (rendering). Everything here runs in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnxruntime as ort
from PIL import Image

from models_store.companion import BUILDER_VERSION
from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.explain import (
    ArrayOut,
    ExplainRequest,
    ExplainResult,
    ModelProvenance,
    Provenance,
    Stats,
    Target,
)
from service import __version__
from service.explain import CanonicalRunner, get_method, run_method
from service.explain.faithfulness import faithfulness
from service.explain.registry import resolve_options
from service.explain.targets import rank_target
from service.imaging.preprocess import (
    Geometry,
    box_to_input,
    box_to_original,
    preprocess_with_geometry,
    scale_box,
    to_original,
)
from service.imaging.render import encode_array, map_stats, resize_map, to_base64
from service.imaging.signals import box_to_map
from service.monitoring.observation import Observation
from service.pipeline.heatmaps import finish, fuse_cam_layers, gradient_map, resolve_render
from service.pipeline.layout import canonical_runner, input_plan
from service.pipeline.limits import check_work
from service.pipeline.pictures import render_pictures
from service.pipeline.targets import explicit_targets, requested_k, resolve_targets
from service.scores import class_score, probabilities
from service.state import AppState

PngChoice = Literal["overlay", "heatmap"]
Box = tuple[float, float, float, float]
MAX_EXTRA_VALUES = 64  # per result; larger method intermediates are not sent


@dataclass
class Explained:
    layers: list[str]
    provider: str
    results: list[ExplainResult]
    pngs: list[bytes | None]  # with png=...: the PNG an `Accept: image/png` client gets
    timings_ms: dict[str, float]
    # one per result, for service.monitoring (the map over the input window, regions on it)
    observations: list[Observation] = field(default_factory=list)
    provenance: Provenance | None = None


@dataclass
class _Rendered:
    result: ExplainResult
    png: bytes | None
    window_map: np.ndarray  # the 2-D map before size=original: covers the input window


def explain(
    state: AppState,
    record: ModelRecord,
    body: ExplainRequest,
    images: list[Image.Image],
    png: PngChoice | None = None,
) -> Explained:
    """``png``: render only that PNG per result (for ``Accept: image/png``), nothing else
    (no stats, no faithfulness checks)."""
    card = record.card
    body = body.model_copy(update={"render": resolve_render(body.render, body.method)})
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    # canonical NCHW rows; the runner feeds the model its own layout and dtype
    x, geometries = preprocess_with_geometry(images, input_plan(record).nchw)
    runner = canonical_runner(state, record)
    layers = resolve_layers(state, record, body.layer)
    method = get_method(body.method)
    options = resolve_options(method, body.options)  # validated again by check_work
    rows = _rows(state, body, record, runner, x, method.ranked)
    checks = body.faithfulness if png is None else None
    check_work(
        state.settings,
        body.method,
        body.options,
        layers,
        state.summary(record),
        (card.input.height, card.input.width),
        checks,
        len(rows),
    )
    regions: dict[str, Box] = {**card.regions, **(body.regions or {})}
    timings["preprocess"] = _lap(clock)  # and target choice; every model run is "method"

    clock = time.perf_counter()
    image_of_row = np.array([i for i, _ in rows])
    x_rows = x[image_of_row]
    output = run_method(body.method, runner, x_rows, [t for _, t in rows], layers, body.options)
    scores = output.scores  # one row per (image, target), from the method's own run
    probs = probabilities(scores, card)
    timings["method"] = _lap(clock)

    clock = time.perf_counter()
    results, pngs, window_maps, observations = [], [], [], []
    want_stats = png is None and ("stats" in body.outputs or checks is not None)
    for r, (i, _) in enumerate(rows):
        rendered = _render_row(
            body,
            output,
            r,
            images[i],
            geometries[i],
            png,
            regions if want_stats else None,
            bgr=card.input.color == "BGR",
        )
        target = int(output.targets[r])  # type: ignore[index]
        cs = class_score(target, scores[r], probs[r], card)
        result = rendered.result
        result.image, result.target = i, Target(**vars(cs))
        results.append(result)
        pngs.append(rendered.png)
        window_maps.append(rendered.window_map)
        hw = rendered.window_map.shape
        observations.append(
            Observation(
                model=record.name,
                version=record.version,
                method=body.method,
                target=target,
                label=cs.label,
                probability=cs.probability,
                attribution=rendered.window_map,
                regions={name: box_to_map(box, hw) for name, box in regions.items()},
            )
        )
    timings["render"] = _lap(clock)

    if checks is not None:
        clock = time.perf_counter()
        input_hw = (int(x.shape[2]), int(x.shape[3]))
        maps = [
            m if m.shape == input_hw else resize_map(m, input_hw, body.render.interpolation)
            for m in window_maps
        ]
        classes = [int(t) for t in output.targets]  # type: ignore[union-attr]
        figures = faithfulness(runner, x_rows, maps, classes, card, checks)
        for result, figure in zip(results, figures, strict=True):
            assert result.stats is not None  # want_stats
            result.stats = Stats(**{**result.stats.model_dump(), **figure})
        timings["faithfulness"] = _lap(clock)

    provenance = Provenance(
        model=ModelProvenance(name=record.name, version=record.version, sha256=record.sha256),
        cnnvis=__version__,
        onnxruntime=ort.__version__,
        companion_builder=BUILDER_VERSION,
        provider=runner.provider,
        method=body.method,
        layers=layers,
        options=options,
        render=body.render,
        targets=body.targets,
        seed=options.get("seed") if "seed" in method.options else None,
        faithfulness=checks,
        regions=regions,
    )
    return Explained(layers, runner.provider, results, pngs, timings, observations, provenance)


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
    regions: dict[str, Box] | None,
    *,
    bgr: bool = False,
) -> _Rendered:
    """Row ``r``'s result; its stats (with ``regions``, normalised input-window boxes) when
    ``regions`` is not None. ``body.render`` has its defaults filled in (resolve_render)."""
    render = body.render
    # CAM-like methods (the CAM family, Score-CAM, ablation) give (rows, h, w) per layer;
    # attribution methods give (rows, C, H, W) at the input
    cam_like = output.maps[0].ndim == 3  # type: ignore[attr-defined]
    input_hw = geometry.input_size
    attribution = None
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

    window_map = m  # over the model's input window (input or feature resolution)
    result = ExplainResult(image=0, target=Target(index=0, label=None, score=0, probability=0))
    # only what was asked for: PNG encoding is most of the rendering time
    wanted = {png} if png else set(body.outputs)
    pictures = render_pictures(m, attribution, image, geometry, render, wanted, bgr=bgr)
    result.heatmap = to_base64(pictures.heatmap) if pictures.heatmap else None
    result.overlay = to_base64(pictures.overlay) if pictures.overlay else None
    if png:
        chosen = pictures.heatmap if png == "heatmap" else pictures.overlay
        return _Rendered(result, chosen, window_map)
    if render.size == "original":  # arrays and stats on the posted image's grid too
        m = to_original(m, geometry)
    if "array" in wanted:
        result.array = ArrayOut(**encode_array(raw if raw is not None else m))
    if regions is not None:
        result.stats = Stats(
            **map_stats(
                m,
                _roi_box(body, geometry, m.shape),
                _boxes(regions, geometry, render.size, m.shape),
            )
        )
    result.extras = _row_extras(output.extras, r, len(output.scores))  # type: ignore[attr-defined]
    return _Rendered(result, None, window_map)


def _roi_box(body: ExplainRequest, geometry: Geometry, hw: tuple[int, ...]) -> Box | None:
    """roi.box (original pixels) in the rendered map's pixels."""
    if body.roi is None:
        return None
    if body.render.size == "original":
        return body.roi.box
    box = box_to_input(body.roi.box, geometry)
    if body.render.size == "feature":
        box = scale_box(box, geometry.input_size, (int(hw[0]), int(hw[1])))
    return box


def _boxes(
    regions: dict[str, Box], geometry: Geometry, size: str, hw: tuple[int, ...]
) -> dict[str, Box]:
    """Normalised input-window boxes in the rendered map's pixels: a map at input or feature
    size covers the window; an original-size map gets the window's boxes in original pixels."""
    if size != "original":
        return {name: box_to_map(box, (int(hw[0]), int(hw[1]))) for name, box in regions.items()}
    return {
        name: box_to_original(box_to_map(box, geometry.input_size), geometry)
        for name, box in regions.items()
    }


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
