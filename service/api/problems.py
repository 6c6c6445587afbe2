"""Turns every error into RFC 9457 problem details; a client's mistake is never a 500."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models_store.errors import ProblemError
from service.errors import InvalidRequest

log = logging.getLogger("cnnvis.api")
M = TypeVar("M", bound=BaseModel)
PROBLEM_BASE = "https://cnnvis.dev/problems/"
MEDIA_TYPE = "application/problem+json"


def problem_response(
    status: int,
    title: str,
    detail: str | None,
    *,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def validation_errors(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "")})
    return out


def parse_request(model: type[M], payload: Any) -> M:
    """``payload`` as ``model``; a mismatch is the client's: a 422 naming every field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise InvalidRequest(summarize_errors(errors), errors=errors) from None


def summarize_errors(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
        match, _ = route.matches({**request.scope, "method": "POST"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            slug=exc.slug,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return problem_response(
            422, "Invalid request", summarize_errors(errors), slug="validation", errors=errors
        )

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        # a client's body is parsed by parse_request (422); this one is the server's own
        # model failing validation, e.g. a response it built wrongly
        log.exception("internal validation error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal server error", "an unexpected error occurred; see the server log"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": not JSON
            return problem_response(
                422,
                "Invalid request",
                f"the body is not valid JSON ({exc.detail})",
                slug="validation",
            )
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        return problem_response(exc.status_code, title, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal server error", "an unexpected error occurred; see the server log"
        )


def _problem_doc(description: str) -> dict[str, Any]:
    # schemas.problem.Problem, added to the components by create_app
    return {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


# Every error any route can answer, documented once for the OpenAPI document.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_doc("A bearer token is required"),
    403: _problem_doc("The token is not valid here, or the store is read-only"),
    404: _problem_doc("No such model, version or route"),
    405: _problem_doc("Method not allowed"),
    406: _problem_doc("Accept: image/png with more than one result"),
    409: _problem_doc("The model version exists"),
    413: _problem_doc("A body, image, image count or model over its limit"),
    415: _problem_doc("Not a supported image or content type"),
    422: _problem_doc("Invalid request, image, model or card: detail says what"),
    503: _problem_doc("The model's queue is full (see Retry-After)"),
    504: _problem_doc("The request ran past its deadline"),
}
