"""Request and response of POST /v1/models/{name}/predict."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.images import ImagesField


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    top_k: int = Field(5, ge=1, description="Classes per image, best first.")


class Prediction(BaseModel):
    index: int
    label: str | None
    score: float = Field(..., description="The model's raw output for this class.")
    probability: float = Field(
        ..., description="softmax (multiclass) or sigmoid (multilabel, binary) of the logits."
    )


class PredictResponse(BaseModel):
    model: dict[str, str]
    provider: str
    predictions: list[list[Prediction]]
    timings_ms: dict[str, float]
