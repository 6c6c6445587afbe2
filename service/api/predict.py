"""POST /v1/models/{name}/predict: ranked classes for each posted image."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from models_store.errors import ProblemError
from schemas.predict import Prediction, PredictRequest, PredictResponse
from service.api.body import openapi_body, read_image_request
from service.api.deps import ApiDep, StateDep
from service.monitoring import sampler as sampling
from service.pipeline.predict import predict_images

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
    done = await state.admission.run(
        record.name,
        predict_images,
        state,
        record,
        parsed.images,
        body.top_k,
        disconnected=request.is_disconnected,
    )
    # O(1) per image and never raises: queues references for the background sampler
    sampling.offer(state, record, parsed.images, done.ranked)
    return PredictResponse(
        model={"name": record.name, "version": record.version},
        provider=done.provider,
        predictions=[[Prediction(**vars(c)) for c in row] for row in done.ranked],
        timings_ms={
            "decode": round(parsed.decode_ms, 3),
            "inference": round(done.inference_ms, 3),
            "total": round((time.perf_counter() - started) * 1000, 3),
        },
    )
