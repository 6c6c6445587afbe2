"""Refuses request bodies over the configured size with 413, before the app buffers them."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge


class _TooLarge(PayloadTooLarge):
    """Raised from receive(); a ProblemError, so whichever layer catches it answers 413."""

    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(f"the request body is over {limit} bytes (CNNVIS_MAX_BODY_BYTES)")


class BodyLimit:
    """Pure ASGI middleware: checks Content-Length up front and counts streamed bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        is_upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/models"
        # a model upload may be large; allow the form's framing on top of the model itself
        return self.max_upload_bytes + 1024 * 1024 if is_upload else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, int(declared), limit)
            return

        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(seen, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _refuse(send, seen, limit)


async def _refuse(send: Send, size: int, limit: int) -> None:
    body = json.dumps(
        {
            "type": "https://cnnvis.dev/problems/payload-too-large",
            "title": "Payload too large",
            "status": 413,
            "detail": f"the request body is at least {size} bytes; the limit is {limit} bytes"
            " (CNNVIS_MAX_BODY_BYTES, or CNNVIS_MAX_MODEL_BYTES for uploads)",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
