"""The probes: compare two models, transformations (invariance), adversarial perturbations."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from schemas.probes import (
    AdversarialRequest,
    AdversarialResponse,
    CompareRequest,
    CompareResponse,
    InvarianceRequest,
    InvarianceResponse,
    ModelRef,
)
from service.api.body import openapi_body, read_image_request
from service.api.deps import ApiDep, StateDep, VersionQuery
from service.api.explain import NotAcceptable
from service.probes.adversarial import adversarial
from service.probes.compare import compare
from service.probes.invariance import invariance

router = APIRouter(prefix="/v1/models", tags=["probes"], dependencies=[ApiDep])
BODIES: list[type[BaseModel]] = [CompareRequest, InvarianceRequest, AdversarialRequest]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@router.post(
    "/{name}/compare",
    response_model=CompareResponse,
    summary="Compare two versions (or two models of one label set) on the same images",
    openapi_extra=openapi_body(CompareRequest),
)
async def compare_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> CompareResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, CompareRequest, state.settings)
    done = await state.admission.run(
        record.name,
        compare,
        state,
        record,
        parsed.body,
        parsed.images,
        disconnected=request.is_disconnected,
    )
    done.timings_ms.update(decode=round(parsed.decode_ms, 3), total=_ms(started))
    return done


@router.post(
    "/{name}/invariance",
    response_model=InvarianceResponse,
    summary="Predictions, maps and activations under shifts, rotations, scales and flips",
    openapi_extra=openapi_body(InvarianceRequest),
    responses={200: {"content": {"image/png": {}}, "description": "JSON, or the figure PNG."}},
)
async def invariance_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> Response | InvarianceResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, InvarianceRequest, state.settings)
    png = "image/png" in request.headers.get("accept", "")
    if png and len(parsed.images) > 1:
        raise NotAcceptable("Accept: image/png returns one figure; post one image")
    done = await state.admission.run(
        record.name,
        invariance,
        state,
        record,
        parsed.body,
        parsed.images,
        png,
        disconnected=request.is_disconnected,
    )
    if png:
        return Response(done.figures[0], media_type="image/png")
    done.response.timings_ms.update(decode=round(parsed.decode_ms, 3), total=_ms(started))
    return done.response


@router.post(
    "/{name}/adversarial",
    response_model=AdversarialResponse,
    summary="FGSM / PGD on the posted pixels: prediction and Grad-CAM before and after",
    openapi_extra=openapi_body(AdversarialRequest),
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or the perturbed image PNG."}
    },
)
async def adversarial_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> Response | AdversarialResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, AdversarialRequest, state.settings)
    body: AdversarialRequest = parsed.body
    png = "image/png" in request.headers.get("accept", "")
    if png and len(parsed.images) > 1:
        raise NotAcceptable("Accept: image/png returns one perturbed image; post one image")
    done = await state.admission.run(
        record.name,
        adversarial,
        state,
        record,
        body,
        parsed.images,
        disconnected=request.is_disconnected,
    )
    if png:
        return Response(done.pngs[0], media_type="image/png")
    return AdversarialResponse(
        model=ModelRef(name=record.name, version=record.version),
        attack=body.attack,
        epsilon=body.epsilon,
        steps=1 if body.attack == "fgsm" else body.steps,
        step_size=done.step_size,
        target=done.target,
        layer=done.layer,
        provider=done.provider,
        results=done.results,
        timings_ms={**done.timings_ms, "decode": round(parsed.decode_ms, 3), "total": _ms(started)},
    )
