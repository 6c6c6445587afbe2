"""POST /v1/models/{name}/invariance: what shifts, rotations, scales and flips do to the
prediction, the explanation and the feature maps (docs/probes.md). Runs in a worker thread.

Each transformation is applied to the model's input window (the image as the model sees it,
at its input size; uncovered pixels black), the result posted to the explain pipeline as an
image whose preprocessing is the identity, and the map of the untransformed top-1 class (or
``target``) mapped back through the inverse transformation onto the untransformed map's grid;
layer activations likewise, on each layer's own grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.card import InputSpec
from schemas.explain import ExplainRequest, Target
from schemas.probes import (
    InvarianceRequest,
    InvarianceResponse,
    InvarianceResult,
    LayerInvariance,
    MapSimilarity,
    ModelRef,
    Shift,
    TransformResult,
)
from service.imaging.colormaps import apply_colormap
from service.imaging.decode import to_8bit
from service.imaging.preprocess import input_window, plan_geometry, preprocess
from service.imaging.render import encode_colormapped_png, encode_png, resize_map, to_base64
from service.pipeline.explain import explain
from service.pipeline.layout import canonical_runner, input_plan
from service.pipeline.targets import class_index
from service.probes.fields import at_most, bad_field
from service.probes.similarity import map_similarity, pearson
from service.probes.warp import exact, matrix, on_grid, unwarp_channels, warp_hw, warp_image
from service.scores import class_score, probabilities
from service.state import AppState

PROBE_IMAGE = "<probe>"
GAP = 4  # pixels between the figure's tiles
UNCOVERED = 96  # grey of figure pixels a mapped-back map does not cover


@dataclass
class Invariance:
    response: InvarianceResponse
    figures: list[bytes]


def check_limits(body: InvarianceRequest, state: AppState, spec: InputSpec) -> None:
    at_most(
        "transforms",
        len(body.transforms),
        state.settings.max_invariance_transforms,
        "CNNVIS_MAX_INVARIANCE_TRANSFORMS",
    )
    for i, t in enumerate(body.transforms):
        if isinstance(t, Shift):
            if abs(t.dx) > spec.width // 2:
                raise bad_field(f"transforms.{i}.dx", f"|dx| is at most {spec.width // 2}")
            if abs(t.dy) > spec.height // 2:
                raise bad_field(f"transforms.{i}.dy", f"|dy| is at most {spec.height // 2}")


def posted(window: np.ndarray, spec: InputSpec) -> Image.Image:
    """An image whose preprocessing under ``spec`` gives ``window`` (H, W, 3) back exactly:
    the window itself under stretch, the window on a canvas the crop cuts it from otherwise."""
    if spec.resize == "stretch":
        return Image.fromarray(window)
    side = spec.resize_shorter or max(spec.height, spec.width)
    if side < max(spec.height, spec.width):
        raise ProblemError(
            "invariance needs a crop that fits the resized image (resize_shorter >= the crop);"
            " this model's card pads the crop"
        )
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    geometry = plan_geometry((side, side), spec)
    left, top, right, bottom = geometry.crop_box
    canvas[top:bottom, left:right] = window
    return Image.fromarray(canvas)


def invariance(
    state: AppState,
    record: ModelRecord,
    body: InvarianceRequest,
    images: list[Image.Image],
    png: bool = False,
) -> Invariance:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    card = record.card
    spec = input_plan(record).nchw
    check_limits(body, state, spec)
    runner = canonical_runner(state, record)
    size = (spec.height, spec.width)
    transforms = [matrix(t, *size) for t in body.transforms]
    render = body.render
    colormap = render.colormap or "jet"
    if render.size != "feature":
        render = render.model_copy(update={"size": "input"})
    want_figure = png or "figure" in body.outputs
    for i, name in enumerate(body.layers or []):
        try:
            state.summary(record).layer(name)
        except ProblemError as exc:
            raise bad_field(f"layers.{i}", exc.detail) from None

    windows: list[list[np.ndarray]] = []
    canvases: list[Image.Image] = []
    for img in images:
        rgb = to_8bit(img, "RGB")
        window = np.asarray(input_window(rgb, plan_geometry((rgb.height, rgb.width), spec)))
        rows = [window, *(warp_image(window, t) for t in transforms)]
        windows.append(rows)
        canvases.extend(posted(w, spec) for w in rows)
    per = 1 + len(transforms)
    x = preprocess(canvases, spec)
    scores, _ = runner.forward(x)
    probs = probabilities(scores, card)
    top1 = [
        Target(**vars(class_score(int(np.argmax(s)), s, p, card)))
        for s, p in zip(scores, probs, strict=True)
    ]
    if body.target is not None:
        classes = [class_index(body.target, card, scores.shape[1])] * len(images)
    else:
        classes = [top1[i * per].index for i in range(len(images))]
    timings["predict"] = _lap(clock)

    clock = time.perf_counter()
    request = ExplainRequest(
        images=[PROBE_IMAGE] * len(canvases),
        method=body.method,
        layer=body.layer,
        targets=[[classes[r // per]] for r in range(len(canvases))],
        options=body.options,
        render=render,
        outputs=["overlay"] if want_figure else ["heatmap"],
    )
    done = explain(state, record, request, canvases)
    layers = list(body.layers or done.layers)
    _, acts = runner.forward(x, layers)
    timings["explain"] = _lap(clock)

    clock = time.perf_counter()
    results, figures = [], []
    for i in range(len(images)):
        base = i * per
        m0 = done.observations[base].attribution
        rows_out, backs = [], []
        for j, (t, spec_t) in enumerate(zip(transforms, body.transforms, strict=True)):
            r = base + 1 + j
            mt = done.observations[r].attribution
            back = warp_hw(
                np.asarray(mt, np.float64), np.linalg.inv(on_grid(t, size, mt.shape)), np.nan
            )
            backs.append(back)
            result = TransformResult(
                transform=spec_t,
                prediction=top1[r],
                target=done.results[r].target,
                same_class=top1[r].index == top1[base].index,
                similarity=MapSimilarity(**map_similarity(m0, back, body.grid)),
                layers=[
                    _layer(name, acts[k][base], acts[k][r], t, size)
                    for k, name in enumerate(layers)
                ],
            )
            if "maps" in body.outputs:
                result.map = to_base64(
                    encode_colormapped_png(np.nan_to_num(back, nan=0.0), colormap)
                )
            rows_out.append(result)
        figure = None
        if want_figure:
            overlays = [done.results[base + k].overlay for k in range(per)]
            strongest = acts[0][base].mean(axis=(1, 2)).argmax() if acts else None
            channel = [acts[0][base + k][strongest] for k in range(per)] if acts else []
            figure = _figure(windows[i], overlays, [m0, *backs], channel, colormap)
            figures.append(figure)
        results.append(
            InvarianceResult(
                image=i,
                prediction=top1[base],
                transforms=rows_out,
                figure=to_base64(figure)
                if figure is not None and "figure" in body.outputs
                else None,
            )
        )
    timings["compare"] = _lap(clock)
    response = InvarianceResponse(
        model=ModelRef(name=record.name, version=record.version),
        method=body.method,
        layers=done.layers,
        provider=done.provider,
        results=results,
        timings_ms=timings,
    )
    return Invariance(response, figures)


def _layer(
    name: str, original: np.ndarray, transformed: np.ndarray, t: np.ndarray, size: tuple[int, int]
) -> LayerInvariance:
    back = unwarp_channels(transformed, t, size)
    valid = np.isfinite(back)
    grid_t = on_grid(t, size, (original.shape[1], original.shape[2]))
    return LayerInvariance(
        layer=name,
        shape=list(original.shape),
        pearson=pearson(original[valid], back[valid]) if valid.any() else None,
        exact=exact(grid_t),
    )


def _figure(
    windows: list[np.ndarray],
    overlays: list[str | None],
    maps: list[np.ndarray],
    channel: list[np.ndarray],
    colormap: str,
) -> bytes:
    """One row per image (untransformed first): the image, its overlay, the map mapped back
    (grey where uncovered), the strongest channel of the first layer (on the transformed
    grid, scaled by its untransformed maximum)."""
    import base64
    import io

    h, w = windows[0].shape[:2]
    columns = 4 if channel else 3
    out = np.full(
        (len(windows) * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, dtype=np.uint8
    )
    peak = float(np.max(channel[0])) if channel else 0.0
    for r, window in enumerate(windows):
        tiles = [window]
        data = overlays[r]
        tiles.append(
            np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
            if data
            else window
        )
        m = maps[r]
        if m.shape != (h, w):
            m = resize_map(np.nan_to_num(m, nan=-1.0), (h, w), "nearest")
            m = np.where(m < 0, np.nan, m)
        heat = apply_colormap(np.nan_to_num(m, nan=0.0), colormap)
        heat[~np.isfinite(m)] = UNCOVERED
        tiles.append(heat)
        if channel:
            c = channel[r] / peak if peak > 0 else np.zeros_like(channel[r])
            tiles.append(apply_colormap(resize_map(c, (h, w), "nearest"), "viridis"))
        y = r * (h + GAP)
        for k, tile in enumerate(tiles):
            out[y : y + h, k * (w + GAP) : k * (w + GAP) + w] = tile[:h, :w]
    return encode_png(out)


def _lap(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
