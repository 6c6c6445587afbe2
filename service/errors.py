"""Errors raised by the service's core (imaging, explain, runtime); see models_store.errors."""

from __future__ import annotations

from models_store.errors import (
    InvalidCard,
    InvalidModel,
    LayerNotFound,
    ModelConflict,
    ModelNotFound,
    ProblemError,
    UnsupportedModel,
)

__all__ = [
    "BadImage",
    "GatewayTimeout",
    "ImageTooLarge",
    "InvalidCard",
    "InvalidModel",
    "InvalidRequest",
    "LayerNotFound",
    "ModelConflict",
    "ModelNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProblemError",
    "ServiceUnavailable",
    "UnsupportedMediaType",
    "UnsupportedModel",
]


class InvalidRequest(ProblemError):
    """A body or query string that does not match the request model; ``errors`` has the
    fields."""

    slug = "validation"


class BadImage(ProblemError):
    """The bytes are not a decodable image; detail carries the decoder's reason."""

    title = "Invalid image"
    slug = "invalid-image"


class PayloadTooLarge(ProblemError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class ImageTooLarge(PayloadTooLarge):
    title = "Image too large"
    slug = "image-too-large"


class UnsupportedMediaType(ProblemError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class ServiceUnavailable(ProblemError):
    status = 503
    title = "Service unavailable"
    slug = "unavailable"


class Overloaded(ServiceUnavailable):
    """The model's queue is full: come back later (Retry-After says when)."""

    title = "Overloaded"
    slug = "overloaded"


class GatewayTimeout(ProblemError):
    status = 504
    title = "Deadline exceeded"
    slug = "deadline-exceeded"
