"""RFC 9457 problem details, the body of every error response."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    type: str = Field("about:blank", examples=["https://cnnvis.dev/problems/model-not-found"])
    title: str = Field(..., examples=["Model not found"])
    status: int = Field(..., examples=[404])
    detail: str | None = Field(None, examples=["no model named 'resnet51'"])
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        None, description="Validation errors: one per offending field, with its location."
    )
