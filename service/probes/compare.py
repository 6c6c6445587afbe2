"""POST /v1/models/{name}/compare: the same images and targets through two models (two
versions, or two models of one label set), the maps side by side and how alike they are
(docs/probes.md). Runs in a worker thread.

The targets are chosen on the first model (``targets``, default its top-1) and explained on
both, so the maps answer "does version 2 look where version 1 looked, for the same class";
agreement compares the two models' own rankings.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from models_store.errors import ModelNotFound, ProblemError
from models_store.store import ModelRecord
from schemas.explain import ExplainRequest, Target
from schemas.probes import (
    Agreement,
    CompareRequest,
    CompareResponse,
    CompareResult,
    LayerComparison,
    MapSimilarity,
    ModelRef,
    RegionChange,
    SideMaps,
)
from service.imaging.preprocess import preprocess
from service.imaging.render import resize_map
from service.imaging.signals import box_to_map, region_shares
from service.pipeline.explain import Explained, explain, resolve_layers
from service.pipeline.layout import canonical_runner, input_plan
from service.pipeline.targets import resolve_targets
from service.probes.fields import bad_field
from service.probes.similarity import map_similarity, pearson
from service.scores import ranked
from service.state import AppState

PROBE_IMAGE = "<probe>"
AGREEMENT_K = 5


def other_model(state: AppState, record: ModelRecord, ref: str) -> ModelRecord:
    """The model ``against`` names, checked to share ``record``'s label set (422 otherwise)."""
    try:
        other = state.store.resolve(ref)
    except ModelNotFound as exc:
        raise bad_field("against", exc.detail) from None
    a, b = record.card.labels, other.card.labels
    if a is not None and b is not None:
        if a != b:
            first = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            raise bad_field(
                "against",
                f"{other.ref} has another label set ({len(b)} labels vs {len(a)}; they differ"
                f" first at index {first})",
            )
        return other
    classes_a = canonical_runner(state, record).num_classes()
    classes_b = canonical_runner(state, other).num_classes()
    if (a is None) != (b is None) or classes_a != classes_b:
        raise bad_field(
            "against",
            f"{other.ref} does not share the label set of {record.ref}"
            f" ({classes_b} vs {classes_a} classes, labels {'given' if b else 'absent'}"
            f" vs {'given' if a else 'absent'})",
        )
    return other


def _explain(
    state: AppState,
    record: ModelRecord,
    body: CompareRequest,
    layer: str | list[str],
    targets: list[list[int]],
    images: list[Image.Image],
) -> Explained:
    request = ExplainRequest(
        images=[PROBE_IMAGE] * len(images),
        method=body.method,
        layer=layer,
        targets=targets,  # type: ignore[arg-type]
        options=body.options,
        render=body.render,
        outputs=list(body.outputs) or ["heatmap"],
    )
    return explain(state, record, request, images)


def _shared_layers(state: AppState, a: ModelRecord, b: ModelRecord) -> list[str]:
    theirs = {layer.name: layer.shape for layer in state.summary(b).layers}
    return [
        layer.name
        for layer in state.summary(a).layers
        if layer.grid is None and theirs.get(layer.name) == layer.shape
    ]


def _layer_view(
    state: AppState,
    a: ModelRecord,
    b: ModelRecord,
    body: CompareRequest,
    images: list[Image.Image],
) -> list[LayerComparison] | None:
    if body.layers is None:
        return None
    names = _shared_layers(state, a, b) if body.layers == "shared" else list(body.layers)
    for i, name in enumerate(names if body.layers != "shared" else []):
        for record in (a, b):
            try:
                state.summary(record).layer(name)
            except ProblemError as exc:
                raise bad_field(f"layers.{i}", f"{record.ref}: {exc.detail}") from None
    if not names:
        return []
    acts = []
    for record in (a, b):
        x = preprocess(images, input_plan(record).nchw)
        acts.append(canonical_runner(state, record).forward(x, names)[1])
    out = []
    for j, name in enumerate(names):
        ta, tb = acts[0][j], acts[1][j]
        if ta.shape != tb.shape:
            raise bad_field(
                f"layers.{j}",
                f"{name!r} is {list(ta.shape[1:])} in one model, {list(tb.shape[1:])} in the other",
            )
        for i in range(len(images)):
            u, v = ta[i].astype(np.float64).ravel(), tb[i].astype(np.float64).ravel()
            norm = float(np.linalg.norm(u) * np.linalg.norm(v))
            out.append(
                LayerComparison(
                    image=i,
                    layer=name,
                    shape=list(ta.shape[1:]),
                    pearson=pearson(u, v),
                    cosine=float(np.clip(u @ v / norm, -1, 1)) if norm > 0 else None,
                )
            )
    return sorted(out, key=lambda c: c.image)


def compare(
    state: AppState, record: ModelRecord, body: CompareRequest, images: list[Image.Image]
) -> CompareResponse:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    other = other_model(state, record, body.against)
    scores = []
    for model in (record, other):
        x = preprocess(images, input_plan(model).nchw)
        scores.append(canonical_runner(state, model).forward(x)[0])
    targets = resolve_targets(body.targets, scores[0], record.card, state.settings.max_top_k)
    timings["predict"] = _lap(clock)

    clock = time.perf_counter()
    done_a = _explain(state, record, body, body.layer, targets, images)
    b_layer = body.against_layer if body.against_layer is not None else body.layer
    try:
        resolve_layers(state, other, b_layer)  # a layer the other graph lacks: the field's
    except ProblemError as exc:
        field = "against_layer" if body.against_layer is not None else "layer"
        raise bad_field(field, f"{other.ref}: {exc.detail}") from None
    done_b = _explain(state, other, body, b_layer, targets, images)
    timings["explain"] = _lap(clock)

    clock = time.perf_counter()
    top_a, top_b = ranked(scores[0], AGREEMENT_K), ranked(scores[1], AGREEMENT_K)
    boxes = {**other.card.regions, **record.card.regions, **(body.regions or {})}
    results = []
    for r, (ra, rb) in enumerate(zip(done_a.results, done_b.results, strict=True)):
        i = ra.image
        ma = done_a.observations[r].attribution
        mb = done_b.observations[r].attribution
        if mb.shape != ma.shape:  # two models of different input sizes: A's grid
            mb = resize_map(mb, ma.shape[:2], body.render.interpolation)
        k = min(AGREEMENT_K, top_a.shape[1])
        results.append(
            CompareResult(
                image=i,
                agreement=Agreement(
                    top1=bool(top_a[i, 0] == top_b[i, 0]),
                    top5_overlap=len(set(top_a[i]) & set(top_b[i])) / k,
                ),
                similarity=MapSimilarity(**map_similarity(ma, mb, body.grid)),
                a=_side(ra.target, ra.heatmap, ra.overlay),
                b=_side(rb.target, rb.heatmap, rb.overlay),
                regions=_region_changes(ma, mb, boxes),
            )
        )
    activations = _layer_view(state, record, other, body, images)
    timings["compare"] = _lap(clock)
    return CompareResponse(
        model=ModelRef(name=record.name, version=record.version),
        against=ModelRef(name=other.name, version=other.version),
        method=body.method,
        layers=done_a.layers,
        against_layers=done_b.layers,
        provider=done_a.provider,
        results=results,
        activations=activations,
        timings_ms=timings,
    )


def _side(target: Target, heatmap: str | None, overlay: str | None) -> SideMaps:
    return SideMaps(target=target, heatmap=heatmap, overlay=overlay)


def _region_changes(
    ma: np.ndarray, mb: np.ndarray, regions: dict[str, tuple[float, float, float, float]]
) -> dict[str, RegionChange] | None:
    if not regions:
        return None
    hw = (int(ma.shape[0]), int(ma.shape[1]))
    boxes = {name: box_to_map(box, hw) for name, box in regions.items()}
    sa, sb = region_shares(ma, boxes) or {}, region_shares(mb, boxes) or {}
    out = {}
    for name in regions:
        a, b = sa.get(name), sb.get(name)
        out[name] = RegionChange(a=a, b=b, change=None if a is None or b is None else b - a)
    return out


def _lap(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
