"""The model card: how to feed a registered model and how to read its output.

Posted with the model (`card.json`) and stored beside it. Field names follow the HTTP contract
in ``shared/design/API.md``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.monitoring import MonitoringSpec, check_classes
from schemas.regions import Regions
from schemas.sampling import check_sampling_classes

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$")]


class InputSpec(BaseModel):
    """How an image becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Graph input name; null = the single image input.")
    layout: Literal["auto", "NCHW", "NHWC"] = Field(
        "auto",
        description="Axis order of the image input; auto = detected from the graph (its shape,"
        " else its first Transpose/Conv), NCHW where the graph does not tell. NCHW or NHWC"
        " override the detection.",
    )
    height: int = Field(224, ge=1, le=8192)
    width: int = Field(224, ge=1, le=8192)
    color: Literal["RGB", "BGR", "L"] = "RGB"
    resize: Literal["stretch", "center_crop"] = "stretch"
    resize_shorter: int | None = Field(
        None, ge=1, le=16384, description="center_crop: shorter side resized to this first."
    )
    scale: float = Field(
        1 / 255,
        description="Pixel values (0..255) are multiplied by this (float inputs; a uint8 input"
        " gets the pixels as they are).",
    )
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"input.{field} has {len(values)} values; expected 1 or {self.channels}"
                    f" for color {self.color}"
                )
        if any(s == 0 for s in self.std):
            raise ValueError("input.std must not contain 0")
        if (
            self.resize == "center_crop"
            and self.resize_shorter is not None
            and (self.resize_shorter < min(self.height, self.width))
        ):
            raise ValueError(
                "input.resize_shorter must be at least the crop size (min of height, width)"
            )
        return self


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Graph output name; null = the first output.")
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        "none", description="What the graph already applies to its scores."
    )


class ModelCard(BaseModel):
    """Everything the service needs to know about a model besides the graph."""

    model_config = ConfigDict(extra="forbid")

    name: ModelName
    version: Version | None = Field(None, description="null = next integer version.")
    task: Literal["multiclass", "multilabel", "binary"] = "multiclass"
    input: InputSpec = Field(default_factory=InputSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    labels: list[str] | None = None
    default_layer: str | None = Field(None, description="null = chosen automatically.")
    description: str | None = None
    regions: Regions = Field(
        default_factory=dict,
        description="Named boxes [x0, y0, x1, y1] in normalised coordinates of the model's input"
        " window (e.g. border, watermark): every explanation's stats report the share of"
        " attribution in each.",
    )
    monitoring: MonitoringSpec | None = Field(
        None,
        description="Attribution monitoring: drift gauges per class, baselines from requests,"
        " sampled explanations (docs/monitoring.md).",
    )

    @field_validator("monitoring")
    @classmethod
    def _known_classes(
        cls, monitoring: MonitoringSpec | None, info: ValidationInfo
    ) -> MonitoringSpec | None:
        if monitoring is not None and "labels" in info.data:
            labels = info.data["labels"]
            check_classes(monitoring.classes, labels, "monitoring.classes")
            check_sampling_classes(monitoring.sampling, labels)
        return monitoring
