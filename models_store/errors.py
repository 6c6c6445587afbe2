"""Domain errors. Each carries the HTTP meaning it maps to; only service/api turns them into
responses (problem details), core code just raises them."""

from __future__ import annotations

from typing import Any, ClassVar


class ProblemError(Exception):
    """Base of every error a client can cause. ``detail`` names what was wrong."""

    status: ClassVar[int] = 422
    title: ClassVar[str] = "Invalid request"
    slug: ClassVar[str] = "invalid-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class ModelNotFound(ProblemError):
    status = 404
    title = "Model not found"
    slug = "model-not-found"


class ModelConflict(ProblemError):
    status = 409
    title = "Model version already exists"
    slug = "model-conflict"


class InvalidModel(ProblemError):
    """The uploaded file is not a model we can serve (not ONNX, fails the checker, ...)."""

    title = "Invalid model"
    slug = "invalid-model"


class InvalidCard(ProblemError):
    """The card is malformed or disagrees with the graph."""

    title = "Invalid model card"
    slug = "invalid-card"


class LayerNotFound(ProblemError):
    title = "Unknown layer"
    slug = "unknown-layer"


class UnsupportedModel(ProblemError):
    """A valid model that a requested feature cannot handle (e.g. an op with no gradient rule)."""

    title = "Unsupported by this model"
    slug = "unsupported"
