"""Reading image requests that come either as JSON or as multipart form data.

JSON: the request model as the body, images base64-encoded. Multipart: one or more ``image``
file parts, every other field as a query parameter (so ``curl -F image=@cat.jpg`` works);
nested objects may be passed as JSON strings in a query parameter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from PIL import Image
from pydantic import BaseModel

from service.errors import PayloadTooLarge, ProblemError, UnsupportedMediaType
from service.imaging.decode import decode_base64_image, decode_image
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)


@dataclass
class ImageRequest:
    body: Any  # the validated request model
    images: list[Image.Image]
    decode_ms: float


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its body by hand: JSON, or multipart image parts."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "One part per image; other fields go in the"
                                " query string.",
                            }
                        },
                    }
                },
            },
        }
    }


async def read_image_request(request: Request, model: type[M], settings: Settings) -> ImageRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    started = time.perf_counter()
    if content_type == "multipart/form-data":
        body, raw = await _multipart(request, model, settings)
        images = [_decode(data, settings) for data in raw]
    elif content_type in ("application/json", ""):
        try:
            payload = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise ProblemError(f"the body is not valid JSON: {exc}") from None
        body = model.model_validate(payload)
        encoded: list[str] = body.images  # type: ignore[attr-defined]
        _check_count(len(encoded), settings)
        images = [
            decode_base64_image(
                s, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
            for s in encoded
        ]
    else:
        raise UnsupportedMediaType(
            f"content type {content_type!r} is not supported; send application/json or"
            " multipart/form-data"
        )
    return ImageRequest(body, images, (time.perf_counter() - started) * 1000)


async def _multipart(request: Request, model: type[M], settings: Settings) -> tuple[M, list[bytes]]:
    try:
        form = await request.form(
            max_files=settings.max_images + 1, max_part_size=settings.max_image_bytes
        )
    except ProblemError:
        raise
    except Exception as exc:  # starlette raises MultiPartException / HTTPException
        raise ProblemError(f"the multipart body could not be read: {exc}") from None
    parts = form.getlist("image")
    files = [p for p in parts if hasattr(p, "read")]
    if not files:
        raise ProblemError("the multipart body has no 'image' file part; send -F image=@photo.jpg")
    _check_count(len(files), settings)
    raw = [await f.read() for f in files]  # type: ignore[union-attr]
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        params[key] = _maybe_json(value)
    params["images"] = ["<multipart>"] * len(raw)
    return model.model_validate(params), raw


def _maybe_json(value: str) -> Any:
    if value[:1] in "{[" or value in ("true", "false", "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _decode(data: bytes, settings: Settings) -> Image.Image:
    return decode_image(
        data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {settings.max_images} (CNNVIS_MAX_IMAGES)"
        )


def add_body_schemas(app: Any, models: list[type[BaseModel]]) -> None:
    """Put the models that routes read by hand into the OpenAPI components, so the
    ``$ref`` of :func:`openapi_body` resolves (FastAPI only collects declared parameters)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        spec = original()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = schema
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
