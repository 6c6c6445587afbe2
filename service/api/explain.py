"""Explanations, activation tiles and filter tiles."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from models_store.errors import ProblemError
from schemas.activations import ActivationsRequest, ActivationsResponse, FiltersResponse
from schemas.explain import ExplainRequest, ExplainResponse, TopK
from service.api.body import openapi_body, read_image_request
from service.api.deps import ApiDep, StateDep, VersionQuery
from service.imaging.render import to_base64
from service.pipeline.activations import activations, filters_png
from service.pipeline.explain import explain

router = APIRouter(prefix="/v1/models", tags=["explain"], dependencies=[ApiDep])


class NotAcceptable(ProblemError):
    status = 406
    title = "Not acceptable"
    slug = "not-acceptable"


def expected_results(body: ExplainRequest, images: int) -> int:
    """How many results a request asks for: images x targets per image."""
    targets = body.targets
    if targets == "top1":
        return images
    if isinstance(targets, TopK):
        return images * targets.top_k
    lists = [t for t in targets if isinstance(t, list)]
    if targets and len(lists) == len(targets):  # one list per image
        return sum(len(t) for t in lists)
    return images * len(targets)


@router.post(
    "/{name}/explain",
    response_model=ExplainResponse,
    summary="Explain a classification (heatmaps, overlays, arrays, statistics)",
    openapi_extra=openapi_body(ExplainRequest),
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "JSON, or with"
            " Accept: image/png the overlay (or ?output=heatmap) PNG itself.",
        }
    },
)
async def explain_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> Response | ExplainResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, ExplainRequest, state.settings)
    body: ExplainRequest = parsed.body
    request.state.cnnvis_method = body.method  # the metrics' method label
    png = (body.output or "overlay") if "image/png" in request.headers.get("accept", "") else None
    if png and (results := expected_results(body, len(parsed.images))) > 1:
        raise NotAcceptable(
            f"Accept: image/png returns one PNG, but this request has {results} results;"
            " post one image with one target, or ask for JSON"
        )
    done = await state.admission.run(
        record.name,
        explain,
        state,
        record,
        body,
        parsed.images,
        png,
        disconnected=request.is_disconnected,
    )
    state.monitor.observe(done.observations)
    if png:
        return Response(done.pngs[0], media_type="image/png")
    timings = {"decode": round(parsed.decode_ms, 3), **done.timings_ms}
    timings["total"] = round((time.perf_counter() - started) * 1000, 3)
    return ExplainResponse(
        model={"name": record.name, "version": record.version},
        method=body.method,
        layers=done.layers,
        provider=done.provider,
        results=done.results,
        timings_ms=timings,
        provenance=done.provenance,
    )


@router.post(
    "/{name}/activations",
    response_model=ActivationsResponse,
    summary="Feature-map tiles and statistics of one or more layers",
    openapi_extra=openapi_body(ActivationsRequest),
)
async def activations_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> ActivationsResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, ActivationsRequest, state.settings)
    results, provider = await state.admission.run(
        record.name,
        activations,
        state,
        record,
        parsed.body,
        parsed.images,
        disconnected=request.is_disconnected,
    )
    return ActivationsResponse(
        model={"name": record.name, "version": record.version},
        provider=provider,
        results=results,
        timings_ms={
            "decode": round(parsed.decode_ms, 3),
            "total": round((time.perf_counter() - started) * 1000, 3),
        },
    )


@router.get(
    "/{name}/filters",
    response_model=FiltersResponse,
    summary="Convolution kernels as a mosaic",
    responses={200: {"content": {"image/png": {}}}},
)
def filters_route(
    name: str,
    state: StateDep,
    request: Request,
    layer: Annotated[str, Query(description="Conv node name, weight name or output tensor.")],
    columns: Annotated[int, Query(ge=1, le=64)] = 8,
    tile_size: Annotated[int, Query(ge=4, le=256)] = 32,
    reduce: Annotated[Literal["none", "mean"], Query()] = "none",
    version: VersionQuery = None,
) -> Response | FiltersResponse:
    record = state.store.resolve(name, version)
    node, weight, shape, png = filters_png(record.model, layer, columns, tile_size, reduce)
    if "image/png" in request.headers.get("accept", ""):
        return Response(png, media_type="image/png")
    return FiltersResponse(layer=node, weight=weight, shape=shape, tiles=to_base64(png))
