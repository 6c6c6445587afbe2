"""create_app(settings): wiring only — state, routers, error handlers, limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from schemas.activations import ActivationsRequest
from schemas.explain import ExplainRequest
from schemas.predict import PredictRequest
from schemas.problem import Problem
from service import __version__, observability
from service.api import (
    explain,
    graph,
    health,
    jobs,
    kserve,
    models,
    monitoring,
    predict,
    probes,
    problems,
    samples,
    ui,
)
from service.api.body import add_body_schemas
from service.api.limits import BodyLimit
from service.monitoring.sampler import close_sampler
from service.settings import Settings
from service.state import AppState

log = logging.getLogger("cnnvis")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.open(settings, getattr(app.state, "metrics", None))
        app.state.cnnvis = state
        app.state.cnnvis_jobs = jobs.open_manager(settings)  # interrupted jobs marked now
        log.info("store %s: %d models", settings.store, len(state.store.names()))
        yield
        app.state.cnnvis_jobs.close()  # running jobs stop at their next step: interrupted
        state.admission.close()  # in-flight model work finishes before the process exits
        close_sampler(state, timeout=5)  # sampled explanations: the one running finishes
        state.monitor.close()  # then what is queued for monitoring, within a deadline

    app = FastAPI(
        title="cnnvis",
        version=__version__,
        description="CNN visualizations for ONNX image classifiers: CAM and Grad-CAM family,"
        " gradient maps, perturbation maps, activation and filter tiles.",
        lifespan=lifespan,
        responses=problems.PROBLEM_RESPONSES,
    )
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_model_bytes
    )
    problems.install(app)
    observability.install(app)  # last: the outermost middleware, /metrics, app.state.metrics
    # KServe v1's /v1/models/{name}:predict must match before /v1/models/{name}
    for router in (
        health.router,
        kserve.v1,
        kserve.v2,
        models.router,
        graph.router,
        predict.router,
        explain.router,
        monitoring.router,
        samples.router,
        probes.router,
        jobs.models,
        jobs.router,
        ui.router,
    ):
        app.include_router(router)
    add_body_schemas(
        app,
        [
            PredictRequest,
            ExplainRequest,
            ActivationsRequest,
            Problem,
            *jobs.BODIES,
            *probes.BODIES,
        ],
    )
    return app
