"""Requests and responses of the probes: compare, invariance, adversarial (docs/probes.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.explain import Method, Render, Target, Targets
from schemas.images import ImagesField
from schemas.regions import Regions

SideOutput = Literal["heatmap", "overlay"]
SIDE_OUTPUTS: tuple[SideOutput, ...] = ("heatmap",)
InvarianceOutput = Literal["figure", "maps"]
INVARIANCE_OUTPUTS: tuple[InvarianceOutput, ...] = ("figure",)
Grid = Annotated[int, Field(ge=1, le=64, description="Cells a side for pearson/spearman.")]


class MapSimilarity(BaseModel):
    pearson: float | None = Field(description="Pearson's r of the maps pooled onto the grid.")
    spearman: float | None = Field(description="Spearman's rho of the pooled maps.")
    iou_top: float = Field(description="IoU of the brightest 10% of each map's pixels.")


class ModelRef(BaseModel):
    name: str
    version: str


# ---- compare ------------------------------------------------------------------------------


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    against: str = Field(
        ...,
        min_length=1,
        description="The other model: `name@version` (another version of this model) or a"
        " model with the same labels; without @version its newest.",
    )
    method: Method = "gradcam"
    layer: str | list[str] = Field("auto", description="This model's layer(s), as /explain.")
    against_layer: str | list[str] | None = Field(
        None, description="The other model's layer(s); default: `layer`."
    )
    targets: Targets = Field("top1", description="Chosen on this model, explained on both.")
    options: dict[str, object] = Field(default_factory=dict)
    render: Render = Field(default_factory=Render)
    outputs: list[SideOutput] = Field(default_factory=lambda: list(SIDE_OUTPUTS))
    grid: Grid = 7
    layers: list[str] | Literal["shared"] | None = Field(
        None,
        description="Activations compared layer by layer: names both graphs hold, or"
        " `shared` for every candidate layer of one name and shape in both.",
    )
    regions: Regions | None = Field(None, description="Extra regions, besides the cards'.")


class Agreement(BaseModel):
    top1: bool = Field(description="Both models rank the same class first.")
    top5_overlap: float = Field(description="|top-5 of one ∩ top-5 of the other| / 5.")


class RegionChange(BaseModel):
    a: float | None
    b: float | None
    change: float | None = Field(description="b - a: the share of positive mass moved.")


class SideMaps(BaseModel):
    target: Target
    heatmap: str | None = None
    overlay: str | None = None


class CompareResult(BaseModel):
    image: int
    agreement: Agreement
    similarity: MapSimilarity
    a: SideMaps
    b: SideMaps
    regions: dict[str, RegionChange] | None = None


class LayerComparison(BaseModel):
    image: int
    layer: str
    shape: list[int]
    pearson: float | None = Field(description="Pearson's r of the two activation tensors.")
    cosine: float | None = Field(description="Cosine similarity of the two tensors.")


class CompareResponse(BaseModel):
    model: ModelRef
    against: ModelRef
    method: str
    layers: list[str]
    against_layers: list[str]
    provider: str
    results: list[CompareResult]
    activations: list[LayerComparison] | None = None
    timings_ms: dict[str, float]


# ---- invariance ---------------------------------------------------------------------------


class Shift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["shift"]
    dx: int = Field(0, description="Pixels of the model input, right positive.")
    dy: int = Field(0, description="Pixels of the model input, down positive.")


class Rotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["rotate"]
    degrees: float = Field(..., ge=-180, le=180, description="Counter-clockwise.")


class Scale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scale"]
    factor: float = Field(..., ge=0.5, le=2.0, description="About the centre.")


class Flip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["hflip", "vflip"]


Transform = Annotated[Shift | Rotate | Scale | Flip, Field(discriminator="type")]


class InvarianceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    transforms: list[Transform] = Field(..., min_length=1)
    method: Method = "gradcam"
    layer: str | list[str] = "auto"
    target: int | str | None = Field(
        None, description="The class explained everywhere; default the untransformed top-1."
    )
    layers: list[str] | None = Field(
        None, description="Layers whose activations are compared; default the CAM layer."
    )
    options: dict[str, object] = Field(default_factory=dict)
    render: Render = Field(default_factory=Render)
    grid: Grid = 7
    outputs: list[InvarianceOutput] = Field(default_factory=lambda: list(INVARIANCE_OUTPUTS))


class LayerInvariance(BaseModel):
    layer: str
    shape: list[int]
    pearson: float | None = Field(description="Activations mapped back vs the untransformed.")
    exact: bool = Field(description="The layer's grid maps back cell for cell (no resampling).")


class TransformResult(BaseModel):
    transform: Shift | Rotate | Scale | Flip
    prediction: Target = Field(description="Top-1 class of the transformed image.")
    target: Target = Field(description="The explained class on the transformed image.")
    same_class: bool
    similarity: MapSimilarity = Field(description="Map mapped back vs the untransformed map.")
    layers: list[LayerInvariance]
    map: str | None = Field(None, description="The mapped-back heatmap PNG (outputs: maps).")


class InvarianceResult(BaseModel):
    image: int
    prediction: Target
    transforms: list[TransformResult]
    figure: str | None = Field(None, description="PNG grid: one row per transformation.")


class InvarianceResponse(BaseModel):
    model: ModelRef
    method: str
    layers: list[str]
    provider: str
    results: list[InvarianceResult]
    timings_ms: dict[str, float]


# ---- adversarial --------------------------------------------------------------------------

AdversarialOutput = Literal["adversarial", "perturbation", "gradcam"]
ADVERSARIAL_OUTPUTS: tuple[AdversarialOutput, ...] = ("adversarial", "perturbation", "gradcam")
Budget = Annotated[float, Field(ge=1.0, description="Pixel levels (0..255 scale).")]


class AdversarialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    attack: Literal["fgsm", "pgd"] = "pgd"
    epsilon: Budget = Field(2.0, description="L-infinity budget in pixel levels (1 = 1/255).")
    steps: int = Field(10, ge=1, description="PGD steps (FGSM takes one).")
    step_size: float | None = Field(
        None, gt=0, description="PGD step in pixel levels; default 2.5 * epsilon / steps."
    )
    target: int | str | None = Field(None, description="Aim at this class; default untargeted.")
    sweep: list[Budget] | None = Field(
        None, min_length=1, description="Budgets also tried; the smallest that flips is named."
    )
    layer: str = Field("auto", description="Grad-CAM layer for before/after.")
    grid: Grid = 7
    outputs: list[AdversarialOutput] = Field(default_factory=lambda: list(ADVERSARIAL_OUTPUTS))


class BudgetResult(BaseModel):
    epsilon: float
    after: Target
    flipped: bool
    linf: float


class AdversarialResult(BaseModel):
    image: int
    before: Target
    after: Target
    flipped: bool = Field(description="The top-1 class of the perturbed pixels changed.")
    reached_target: bool | None = Field(None, description="Targeted: the top-1 is the target.")
    linf: float = Field(description="Largest |change| of a pixel, levels.")
    adversarial: str | None = Field(None, description="The perturbed image, PNG, exact pixels.")
    perturbation: str | None = Field(
        None, description="The change, PNG, mid-grey 128 = 0, ±epsilon = 1/255 and 255."
    )
    gradcam_before: str | None = None
    gradcam_after: str | None = None
    gradcam_similarity: MapSimilarity | None = None
    sweep: list[BudgetResult] | None = None
    smallest_flip: float | None = Field(None, description="Smallest budget that flipped.")


class AdversarialResponse(BaseModel):
    model: ModelRef
    attack: str
    epsilon: float
    steps: int
    step_size: float
    target: Target | None
    layer: str | None
    provider: str
    results: list[AdversarialResult]
    timings_ms: dict[str, float]
