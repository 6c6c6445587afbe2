"""Feature visualisation, DeepDream and inversion as jobs: POST returns 202 and a Location,
``GET /v1/jobs/{id}`` reports progress and, once done, the PNGs and the objective curve."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.featurevis import (
    DeepDreamRequest,
    FeatureVisRequest,
    InvertRequest,
    JobInfo,
    JobList,
)
from service.api.body import openapi_body, read_image_request
from service.api.deps import ApiDep, StateDep, VersionQuery
from service.api.problems import parse_request
from service.featurevis import jobs as build
from service.imaging.render import to_base64
from service.jobs import FINISHED, Job, JobManager, JobNotFound, Work
from service.settings import Settings
from service.state import AppState

models = APIRouter(prefix="/v1/models", tags=["featurevis"], dependencies=[ApiDep])
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ApiDep])
CANCEL_WAIT_S = 5.0  # DELETE of a running job waits this long for it to stop

_lock = threading.Lock()


def open_manager(settings: Settings) -> JobManager:
    """The job manager of a service: results under CNNVIS_JOBS_DIR (default <store>/.jobs)."""
    return JobManager(
        settings.jobs_dir or settings.store / ".jobs",
        max_running=settings.max_running_jobs,
        max_queued=settings.max_queued_jobs,
        deadline_s=settings.job_deadline_s,
        retention_s=settings.job_retention_s,
    )


def manager(app: FastAPI, state: AppState) -> JobManager:
    """``app.state.cnnvis_jobs`` (opened by the lifespan; created here if it was not)."""
    found = getattr(app.state, "cnnvis_jobs", None)
    if found is None:
        with _lock:
            found = getattr(app.state, "cnnvis_jobs", None)
            if found is None:
                found = open_manager(state.settings)
                app.state.cnnvis_jobs = found
    return found  # type: ignore[no-any-return]


def info(job: Job, manager: JobManager, *, images: bool = True) -> JobInfo:
    result = None
    if job.state == "done" and job.final is not None:
        pngs = [to_base64(p) for p in manager.images(job)] if images else []
        result = {
            "images": pngs,
            "curve": job.curve,
            "initial": job.initial,
            "final": job.final,
            "seconds": job.seconds or 0.0,
        }
    return JobInfo(
        id=job.id,
        kind=job.kind,  # type: ignore[arg-type]
        model=job.model,
        state=job.state,  # type: ignore[arg-type]
        created=job.created,
        started=job.started,
        finished=job.finished,
        progress=job.progress(manager.clock()),  # type: ignore[arg-type]
        error=job.error,
        request=job.request,
        result=result,  # type: ignore[arg-type]
    )


def _accepted(job: Job, jobs: JobManager) -> JSONResponse:
    body = info(job, jobs).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


def _submit(
    request: Request,
    state: AppState,
    record: ModelRecord,
    kind: str,
    params: dict[str, Any],
    steps: int,
    work: Work,
) -> JSONResponse:
    jobs = manager(request.app, state)
    model = {"name": record.name, "version": record.version}
    return _accepted(jobs.submit(kind, model, params, steps, work), jobs)


ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobInfo, "description": "The job, queued; Location: /v1/jobs/{id}."}
}


# read by hand (service/app.py puts them in the OpenAPI components)
BODIES: list[type[BaseModel]] = [FeatureVisRequest, DeepDreamRequest, InvertRequest]


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@models.post(
    "/{name}/featurevis",
    status_code=202,
    response_model=JobInfo,
    responses=ACCEPTED,
    summary="Start a feature visualisation (optimise an image for an objective)",
    openapi_extra=_json_body(FeatureVisRequest),
)
async def featurevis_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> JSONResponse:
    record = state.store.resolve(name, version)
    try:
        payload = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ProblemError(f"the body is not valid JSON: {exc}") from None
    body = parse_request(FeatureVisRequest, payload)
    work = await asyncio.to_thread(build.featurevis_work, state, record, body)
    params = body.model_dump(mode="json", by_alias=True)
    return _submit(request, state, record, "featurevis", params, body.steps, work)


@models.post(
    "/{name}/deepdream",
    status_code=202,
    response_model=JobInfo,
    responses=ACCEPTED,
    summary="Start a DeepDream of a posted image (octaves of gradient ascent)",
    openapi_extra=openapi_body(DeepDreamRequest),
)
async def deepdream_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> JSONResponse:
    return await _image_job(name, version, request, state, "deepdream", DeepDreamRequest)


@models.post(
    "/{name}/invert",
    status_code=202,
    response_model=JobInfo,
    responses=ACCEPTED,
    summary="Start an inversion: an image whose layer features match a posted image's",
    openapi_extra=openapi_body(InvertRequest),
)
async def invert_route(
    name: str, request: Request, state: StateDep, version: VersionQuery = None
) -> JSONResponse:
    return await _image_job(name, version, request, state, "invert", InvertRequest)


async def _image_job(
    name: str,
    version: str | None,
    request: Request,
    state: AppState,
    kind: str,
    model: type[DeepDreamRequest] | type[InvertRequest],
) -> JSONResponse:
    """A job that starts from one posted image (DeepDream, inversion)."""
    record = state.store.resolve(name, version)
    parsed = await read_image_request(request, model, state.settings)
    body, image = parsed.body, parsed.images[0]
    if isinstance(body, DeepDreamRequest):
        steps = body.steps * body.octaves
        work = await asyncio.to_thread(build.deepdream_work, state, record, body, image)
    else:
        steps = body.steps
        work = await asyncio.to_thread(build.invert_work, state, record, body, image)
    params = body.model_dump(mode="json", by_alias=True, exclude={"images"})
    return _submit(request, state, record, kind, params, steps, work)


@router.get("", response_model=JobList, summary="Every job kept (newest first), no images")
def list_jobs(request: Request, state: StateDep) -> JobList:
    jobs = manager(request.app, state)
    return JobList(jobs=[info(j, jobs, images=False) for j in jobs.all()])


@router.get("/{job_id}", response_model=JobInfo, summary="A job's state, progress and result")
def get_job(job_id: str, request: Request, state: StateDep) -> JobInfo:
    jobs = manager(request.app, state)
    return info(jobs.get(job_id), jobs)


@router.get(
    "/{job_id}/images/{index}",
    summary="One result PNG of a finished job",
    responses={200: {"content": {"image/png": {}}}},
)
def job_image(job_id: str, index: int, request: Request, state: StateDep) -> Response:
    jobs = manager(request.app, state)
    job = jobs.get(job_id)
    if job.state != "done" or not 0 <= index < job.images:
        raise JobNotFound(f"job {job_id!r} has no image {index} (state {job.state})")
    return Response(jobs.images(job)[index], media_type="image/png")


@router.delete(
    "/{job_id}",
    response_model=JobInfo,
    summary="Cancel a queued or running job; delete a finished one and its results",
)
async def delete_job(job_id: str, request: Request, state: StateDep) -> JobInfo:
    jobs = manager(request.app, state)
    job = jobs.get(job_id)
    was_finished = job.state in FINISHED
    job = jobs.cancel(job_id)
    if not was_finished:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        while job.state not in FINISHED and loop.time() < deadline:
            await asyncio.sleep(0.05)
    return info(job, jobs, images=False)
