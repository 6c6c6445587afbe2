"""Liveness and readiness."""

from __future__ import annotations

import onnxruntime as ort
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.runtime.sessions import provider_list

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness, with the onnxruntime providers")
def healthz(state: StateDep) -> dict[str, object]:
    preferred = [p if isinstance(p, str) else p[0] for p in provider_list(state.settings)]
    return {
        "status": "ok",
        "onnxruntime": ort.__version__,
        "providers_available": preferred,
        "providers_in_use": state.sessions.providers_in_use(),
    }


@router.get("/readyz", summary="200 once the model store is loaded, 503 before")
def readyz(state: StateDep) -> JSONResponse:
    try:
        models = state.store.names()
    except OSError as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "models": len(models)})
