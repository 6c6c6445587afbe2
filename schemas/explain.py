"""Request and response of POST /v1/models/{name}/explain (see docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.images import ImagesField

Method = Literal[
    "cam",
    "gradcam",
    "hirescam",
    "gradcam_elementwise",
    "gradcampp",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "saliency",
    "inputxgradient",
    "guided_backprop",
    "deconvnet",
    "guided_gradcam",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
]
Output = Literal["heatmap", "overlay", "array", "stats"]
Colormap = Literal["jet", "viridis", "inferno", "turbo", "gray", "magma", "plasma"]


class TopK(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(..., ge=1)


# "top1" | {"top_k": k} | [class index or label, ...] | [[...], ...] one list per image
Targets = Literal["top1"] | TopK | list[int | str] | list[list[int | str]]


class Render(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: Literal["input", "original", "feature"] = Field(
        "input",
        description="input: the model's input size; original: the posted image's;"
        " feature: the layer's resolution (CAM family only).",
    )
    normalize: Literal["minmax", "percentile", "none"] = "minmax"
    relu: bool = Field(True, description="CAM family: ReLU before normalising.")
    reduce: Literal["auto", "abs_max", "sum", "none"] = Field(
        "auto",
        description="Gradient maps over channels. none = raw (C,H,W) w.r.t. the"
        " preprocessed input (array output only).",
    )
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    colormap: Colormap = "jet"
    alpha: float = Field(0.5, ge=0, le=1, description="Heatmap weight in the overlay.")
    clip_percentiles: tuple[float, float] | None = Field(
        None, description="normalize=percentile: the low and high percentiles (default 1, 99)."
    )
    polarity: Literal["positive", "negative", "both"] = "positive"

    @model_validator(mode="after")
    def _check(self) -> Render:
        if self.clip_percentiles is not None:
            lo, hi = self.clip_percentiles
            if not 0 <= lo < hi <= 100:
                raise ValueError("clip_percentiles must satisfy 0 <= low < high <= 100")
        return self


class Roi(BaseModel):
    model_config = ConfigDict(extra="forbid")
    box: tuple[float, float, float, float] = Field(
        ..., description="[x0, y0, x1, y1] in the posted image's pixels."
    )

    @model_validator(mode="after")
    def _check(self) -> Roi:
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError("roi.box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
        return self


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    method: Method = "gradcam"
    targets: Targets = "top1"
    layer: str | list[str] = Field("auto", description="'auto', a tensor name, or a list.")
    options: dict[str, Any] = Field(default_factory=dict, description="Method parameters.")
    render: Render = Field(default_factory=Render)
    outputs: list[Output] = Field(default_factory=lambda: ["heatmap", "overlay"], min_length=1)
    roi: Roi | None = None
    output: Literal["overlay", "heatmap"] | None = Field(
        None, description="With Accept: image/png: which PNG to return (default overlay)."
    )


class Target(BaseModel):
    index: int
    label: str | None
    score: float
    probability: float


class ArrayOut(BaseModel):
    shape: list[int]
    dtype: Literal["float32"] = "float32"
    data: str = Field(..., description="base64 of the little-endian float32 values, C order.")


class Stats(BaseModel):
    peak: list[int] = Field(..., description="[y, x] of the maximum.")
    center_of_mass: list[float] | None = Field(
        None, description="[y, x] of the positive part; null when nothing is positive."
    )
    entropy: float | None = Field(None, description="Bits; 0 = one hot pixel, log2(h*w) = uniform.")
    roi_fraction: float | None = Field(
        None, description="Share of positive attribution inside roi.box."
    )


class ExplainResult(BaseModel):
    image: int
    target: Target
    heatmap: str | None = None
    overlay: str | None = None
    array: ArrayOut | None = None
    stats: Stats | None = None
    extras: dict[str, Any] | None = None


class ExplainResponse(BaseModel):
    model: dict[str, str]
    method: str
    layers: list[str]
    provider: str
    results: list[ExplainResult]
    timings_ms: dict[str, float]
