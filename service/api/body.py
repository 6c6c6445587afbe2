"""Reading image requests that come either as JSON or as multipart form data.

JSON: the request model as the body, images base64-encoded. Multipart: one or more ``image``
file parts, every other field as a query parameter (so ``curl -F image=@cat.jpg`` works). In
the query string a list is comma-separated or repeated (``outputs=stats,heatmap``,
``targets=281&targets=282``), a nested field is dotted (``render.colormap=turbo``), and any
value may be JSON (``targets={"top_k":2}``).
"""

from __future__ import annotations

import json
import re
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from PIL import Image
from pydantic import BaseModel

from service.api.problems import parse_request
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
        body = parse_request(model, payload)
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
    params = query_fields(request.query_params.multi_items(), model)
    params["images"] = ["<multipart>"] * len(raw)
    return parse_request(model, params), raw


_INTEGER = re.compile(r"^-?[0-9]+$")


def query_fields(items: list[tuple[str, str]], model: type[BaseModel]) -> dict[str, Any]:
    """Query parameters as the fields of ``model``: dotted keys nest, a field that takes a
    list gets comma-separated or repeated values as one (integers where the field takes
    integers: ``targets=281,tabby``), JSON values are parsed."""
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    params: dict[str, Any] = {}
    for key, values in grouped.items():
        head, _, rest = key.partition(".")
        annotation = model.model_fields[head].annotation if head in model.model_fields else None
        if rest:  # render.colormap=turbo -> {"render": {"colormap": "turbo"}}
            nested = params.setdefault(head, {})
            if not isinstance(nested, dict):
                raise ProblemError(f"query parameter {key!r} conflicts with {head!r}")
            nested[rest] = _maybe_json(values[-1])
            continue
        lists, scalars = _split_members(annotation)
        single = len(values) == 1 and "," not in values[0]
        if lists and values[0][:1] not in "{[" and not (single and _fits(values[0], scalars)):
            ints = any(int in _members(typing.get_args(t)[0]) for t in lists if typing.get_args(t))
            parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
            params[key] = [int(p) if ints and _INTEGER.match(p) else p for p in parts]
        else:
            params[key] = _maybe_json(values[-1])
    return params


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a field type (``Annotated`` and unions flattened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _fits(value: str, scalars: list[Any]) -> bool:
    """Whether a lone query value can stand as one of a field's non-list types."""
    for kind in scalars:
        if kind is str or kind is Any:
            return True
        if typing.get_origin(kind) is typing.Literal and value in typing.get_args(kind):
            return True
    return False


def _split_members(annotation: Any) -> tuple[list[Any], list[Any]]:
    """(list types, other types) a field accepts; nothing for an unknown field."""
    if annotation is None:
        return [], []
    members = _members(annotation)
    lists = [m for m in members if m is list or typing.get_origin(m) is list]
    return lists, [m for m in members if m not in lists and m is not type(None)]


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
