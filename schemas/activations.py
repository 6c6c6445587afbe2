"""Activation (feature-map) tiles and convolution-filter tiles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.explain import Colormap, TopK
from schemas.images import ImagesField

TileOutput = Literal["tiles", "stats"]


def _outputs(*names: TileOutput) -> list[TileOutput]:
    return list(names)


class TileRender(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: int = Field(8, ge=1, le=64)
    tile_size: int = Field(64, ge=8, le=512)
    colormap: Colormap = "viridis"
    normalize: Literal["per_channel", "global"] = "per_channel"


class ActivationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    layers: list[str] = Field(default_factory=lambda: ["auto"], min_length=1, max_length=16)
    channels: Literal["all"] | TopK | list[int] = Field(
        default_factory=lambda: TopK(top_k=16),
        description='"all", {"top_k": k} by mean activation, or channel indices.',
    )
    render: TileRender = Field(default_factory=TileRender)
    outputs: list[TileOutput] = Field(
        default_factory=lambda: _outputs("tiles", "stats"), min_length=1
    )


class ChannelStats(BaseModel):
    index: int
    mean: float
    max: float
    sparsity: float = Field(..., description="Share of exact zeros.")


class LayerStats(BaseModel):
    mean: float
    max: float
    sparsity: float
    per_channel: list[ChannelStats]


class ActivationResult(BaseModel):
    image: int
    layer: str
    shape: list[int] = Field(..., description="[C, h, w] of the layer for one image.")
    channels: list[int]
    tiles: str | None = Field(None, description="base64 PNG grid, one tile per channel.")
    stats: LayerStats | None = None


class ActivationsResponse(BaseModel):
    model: dict[str, str]
    provider: str
    results: list[ActivationResult]
    timings_ms: dict[str, float]


class FiltersResponse(BaseModel):
    layer: str = Field(..., description="The Conv node.")
    weight: str = Field(..., description="The weight initializer.")
    shape: list[int] = Field(..., description="[M, C, kh, kw].")
    tiles: str = Field(..., description="base64 PNG mosaic.")
