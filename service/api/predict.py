"""POST /v1/models/{name}/predict: ranked classes for each posted image."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from models_store.errors import ProblemError
from schemas.predict import Prediction, PredictRequest, PredictResponse
from service.api.body import openapi_body, read_image_request
from service.api.deps import ApiDep, StateDep
from service.imaging.preprocess import preprocess
from service.scores import top_k

router = APIRouter(prefix="/v1/models", tags=["predict"], dependencies=[ApiDep])


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    summary="Classify images",
    openapi_extra=openapi_body(PredictRequest),
)
async def predict(
    name: str,
    request: Request,
    state: StateDep,
    version: Annotated[str | None, Query()] = None,
) -> PredictResponse:
    started = time.perf_counter()
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, PredictRequest, state.settings)
    body: PredictRequest = parsed.body
    if body.top_k > state.settings.max_top_k:
        raise ProblemError(
            f"top_k={body.top_k} exceeds the limit {state.settings.max_top_k} (CNNVIS_MAX_TOP_K)"
        )
    card = record.card

    def run() -> tuple[list[list[Prediction]], str, float]:
        batch = preprocess(parsed.images, card.input)
        session = state.session(record)
        t0 = time.perf_counter()
        (scores,) = session.run([card.output.name], {card.input.name: batch})
        ms = (time.perf_counter() - t0) * 1000
        ranked = top_k(scores, card, body.top_k)
        return [[Prediction(**vars(c)) for c in row] for row in ranked], session.provider, ms

    predictions, provider, inference_ms = await run_in_threadpool(run)
    return PredictResponse(
        model={"name": record.name, "version": record.version},
        provider=provider,
        predictions=predictions,
        timings_ms={
            "decode": round(parsed.decode_ms, 3),
            "inference": round(inference_ms, 3),
            "total": round((time.perf_counter() - started) * 1000, 3),
        },
    )
