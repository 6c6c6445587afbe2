"""Typed dependencies shared by the routers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request

from models_store.errors import ProblemError
from service.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.cnnvis  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]
# ?version= on every per-model route
VersionQuery = Annotated[str | None, Query(description="Pin a version; default the newest.")]


class Unauthorized(ProblemError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ProblemError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(request: Request, allowed: list[str], what: str) -> None:
    token = _bearer(request)
    if token is None:
        # RFC 9110 §15.5.2: a 401 names the scheme the client should use
        raise Unauthorized(
            f"{what} requires 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="cnnvis"'},
        )
    # compare against every token, always, in constant time per comparison
    ok = False
    for candidate in allowed:
        ok |= hmac.compare_digest(token.encode(), candidate.encode())
    if not ok:
        raise Forbidden(f"the bearer token is not valid for {what}")


def require_admin(request: Request, state: StateDep) -> None:
    if state.settings.read_only_store:
        raise Forbidden("the model store is read-only (CNNVIS_READ_ONLY_STORE)")
    if state.settings.admin_token:
        _check(request, [state.settings.admin_token], "model registration and deletion")


def require_api(request: Request, state: StateDep) -> None:
    if state.settings.api_tokens:
        _check(request, state.settings.api_tokens, "this endpoint")


AdminDep = Depends(require_admin)
ApiDep = Depends(require_api)
