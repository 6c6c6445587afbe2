"""Request ids, access logs and request metrics: one pure-ASGI middleware around the app.

``install(app)`` attaches a :class:`~service.metrics.Metrics` as ``app.state.metrics``, adds
``GET /metrics`` and the middleware. Add it after every other middleware so that it is the
outermost one and sees their answers too (the body limit's 413s).

Per request the middleware
- takes the client's ``X-Request-ID`` when it is 1-128 characters of ``[A-Za-z0-9._-]``, else
  makes a new one, and echoes it on every response, errors included;
- exposes it as ``request.state.request_id`` and to log records (service/logs.py);
- counts the request by route *template* (``/v1/models/{name}/explain``, never the raw path),
  model, explanation method and status, and times it;
- counts an explain request's outcome in ``cnnvis_explanations_total`` (source ``request``);
- writes one access line (logger ``cnnvis.access``) — method, path without the query string,
  status, duration; never headers.

The explanation method label is ``request.state.cnnvis_method`` when a route sets it, else the
``method`` query parameter (multipart requests carry their fields there), else ``-``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import REQUEST_ID, stamp_request_ids
from service.metrics import NONE, Metrics

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
UNMATCHED = "<unmatched>"
EXPLAIN_ROUTE = "/v1/models/{name}/explain"  # its answers are counted as explanations too
access_log = logging.getLogger("cnnvis.access")


def install(app: FastAPI) -> Metrics:
    from service.api import metrics as metrics_api

    stamp_request_ids()
    metrics = Metrics()
    app.state.metrics = metrics
    app.include_router(metrics_api.router)
    app.add_middleware(
        Observability, metrics=metrics, templates=lambda: list(app.openapi().get("paths", {}))
    )
    return metrics


def request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key.lower() == HEADER and _VALID_ID.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


def route_template(scope: Scope, templates: Callable[[], Sequence[str]]) -> str:
    """The matched route's path template.

    A request answered before routing (the body limit's 413) has no route in its scope; its
    path is then matched against the templates of the OpenAPI document.
    """
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED))
    try:
        candidates = templates()
    except Exception:  # the document failed to build; that is not this request's problem
        return UNMATCHED
    for template in candidates:
        match = compile_path(template)[0].match(scope["path"])
        if match:
            scope.setdefault("path_params", match.groupdict())
            return template
    return UNMATCHED


def explain_outcome(status: int) -> str:
    """An explain request's outcome label: ok | shed (503, 504) | client_error | error."""
    if 200 <= status < 400:
        return "ok"
    if status in (503, 504):
        return "shed"
    if 400 <= status < 500:
        return "client_error"  # 499 too: the client went away
    return "error"


def explain_method(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    method = state.get("cnnvis_method")
    if method is None:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("method")
        method = values[0] if values else None
    return str(method) if method else None


class Observability:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, templates: Callable[[], Sequence[str]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope.get("headers") or [])
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                headers.append((HEADER, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if not response_started:
                status = 499  # the client went away (or the server cancelled the request)
            raise
        except Exception:
            # the app's handlers answer every error they know; this is the last resort, so
            # that an unexpected error carries the request id too. Re-raised for the server's
            # error middleware, which logs it (the request id still set: no reset below) and
            # sends nothing more once a response has started.
            failed = True
            if not response_started:
                await _internal_error(send_with_id)
            raise
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, status, time.perf_counter() - started)
            if not failed:
                REQUEST_ID.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        m = self.metrics
        route = route_template(scope, self.templates)
        name = (scope.get("path_params") or {}).get("name")
        # a name the service does not know must not become a time series
        known = status not in (401, 403, 404) and route != UNMATCHED
        model = m.bounded("model", str(name).partition("@")[0]) if name and known else NONE
        method = m.bounded("cnnvis_method", explain_method(scope)) if known else NONE
        labels: dict[str, Any] = {
            "route": route,
            "http_method": scope["method"],
            "model": model,
            "cnnvis_method": method,
            "status": str(status),
        }
        m.requests.labels(**labels).inc()
        m.request_seconds.labels(**labels).observe(seconds)
        if route == EXPLAIN_ROUTE:
            m.explanations.labels(model, method, explain_outcome(status), "request").inc()
        access_log.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            },
        )


async def _internal_error(send: Send) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Internal server error",
            "status": 500,
            "detail": "an unexpected error occurred; see the server log",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
