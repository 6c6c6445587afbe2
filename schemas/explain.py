"""Request and response of POST /v1/models/{name}/explain (see docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.images import ImagesField
from schemas.regions import Regions

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
Colormap = Literal["jet", "viridis", "inferno", "turbo", "gray", "magma", "plasma", "coolwarm"]


def _outputs(*names: Output) -> list[Output]:
    return list(names)


class TopK(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(..., ge=1)


# "top1" | {"top_k": k} | [class index or label, ...] | [[...], ...] one list per image
Targets = Literal["top1"] | TopK | list[int | str] | list[list[int | str]]


class Render(BaseModel):
    """How maps become arrays and pictures. A field left null takes the method's default
    (docs/methods.md, "Rendering defaults"): CAM maps min-max on jet; gradient magnitudes
    clipped at the 99th percentile, the overlay's opacity following the map; signed
    attributions on a diverging colormap centred at zero. Provenance reports them filled in."""

    model_config = ConfigDict(extra="forbid")

    size: Literal["auto", "input", "original", "feature"] = Field(
        "auto",
        description="auto: pictures at the posted image's size (the map where the model's"
        " window lay, the rest of the photo dimmed), array and stats at the input size;"
        " input: everything at the model's input size; original: everything at the posted"
        " image's; feature: the layer's resolution (CAM family only).",
    )
    normalize: Literal["minmax", "percentile", "none"] | None = Field(
        None, description="null: the method's default (percentile for gradient maps)."
    )
    relu: bool = Field(True, description="CAM family: ReLU before normalising.")
    reduce: Literal["auto", "abs_max", "sum", "none"] = Field(
        "auto",
        description="Gradient maps over channels. none = raw (C,H,W) w.r.t. the"
        " preprocessed input (array output only).",
    )
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    colormap: Colormap | None = Field(
        None, description="null: jet, or coolwarm for a diverging (polarity both) map."
    )
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Heatmap weight in the overlay (with opacity=map, at the map's peak)."
        " null: 0.5 with constant opacity, 0.8 with opacity=map.",
    )
    opacity: Literal["constant", "map"] | None = Field(
        None,
        description="Overlay: constant = alpha everywhere; map = alpha times the map's value"
        " (its magnitude when diverging), so the photo shows where the map is low. null: the"
        " method's default (constant for CAMs).",
    )
    clip_percentiles: tuple[float, float] | None = Field(
        None,
        description="normalize=percentile: the low and high percentiles (default 1, 99; the"
        " method's own for gradient maps).",
    )
    polarity: Literal["positive", "negative", "both"] | None = Field(
        None,
        description="positive, negative (evidence against, rendered hot) or both (signed, in"
        " [-1, 1]; pictures diverge from the middle colour). null: both for signed"
        " attributions, else positive.",
    )
    view: Literal["colormap", "rgb", "outline"] = Field(
        "colormap",
        description="Pictures only: colormap = the map through the colormap; rgb = the"
        " gradient image itself, each channel scaled, zero at mid-grey (gradient methods);"
        " outline = the overlay draws the contour of the top outline_percent of the map.",
    )
    outline_percent: float = Field(
        10.0, gt=0, lt=100, description="view=outline: the share of the map outlined, percent."
    )

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


FaithfulnessCheck = Literal["confidence_drop", "deletion", "insertion"]
FAITHFULNESS_CHECKS: tuple[FaithfulnessCheck, ...] = ("confidence_drop", "deletion", "insertion")


class Faithfulness(BaseModel):
    """Opt-in faithfulness checks of each result's map (docs/methods.md, "Signals")."""

    model_config = ConfigDict(extra="forbid")

    checks: list[FaithfulnessCheck] = Field(
        default_factory=lambda: list(FAITHFULNESS_CHECKS),
        min_length=1,
        description="confidence_drop (Chattopadhay et al. 2018), deletion and insertion"
        " (Petsiuk et al. 2018); each at most once.",
    )
    steps: int = Field(
        20,
        ge=1,
        description="Deletion/insertion steps (curves of steps + 1 points); at most"
        " CNNVIS_MAX_FAITHFULNESS_STEPS.",
    )
    baseline: Literal["zero", "blur"] = Field(
        "zero",
        description="What removed pixels become: zero = 0 in the preprocessed input (the card's"
        " mean colour), blur = the preprocessed input blurred (Gaussian, sigma 5 input pixels).",
    )

    @field_validator("checks")
    @classmethod
    def _distinct(cls, checks: list[FaithfulnessCheck]) -> list[FaithfulnessCheck]:
        repeated = sorted({c for c in checks if checks.count(c) > 1})
        if repeated:
            raise ValueError(f"checks must not repeat: {', '.join(repeated)}")
        return checks


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    method: Method = "gradcam"
    targets: Targets = "top1"
    layer: str | list[str] = Field("auto", description="'auto', a tensor name, or a list.")
    options: dict[str, Any] = Field(default_factory=dict, description="Method parameters.")
    render: Render = Field(default_factory=Render)
    outputs: list[Output] = Field(
        default_factory=lambda: _outputs("heatmap", "overlay"), min_length=1
    )
    roi: Roi | None = None
    regions: Regions | None = Field(
        None,
        description="Named boxes [x0, y0, x1, y1] in normalised coordinates of the model's input"
        " window, added to the card's regions (a name the card has is replaced);"
        " stats.region_shares reports each one's share.",
    )
    faithfulness: Faithfulness | None = Field(
        None,
        description="Run faithfulness checks on each map (extra forwards); the figures go in"
        " stats, which is then filled even without 'stats' in outputs. Ignored with"
        " Accept: image/png.",
    )
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
    sparseness: float = Field(
        0.0, description="Gini index of |map|: 0 = uniform, 1 - 1/(h*w) = one hot pixel."
    )
    top5_share: float | None = Field(
        None, description="Share of the positive mass in the brightest 5% of pixels."
    )
    region_shares: dict[str, float] | None = Field(
        None,
        description="Share of the positive mass inside each named region (card and request);"
        " regions may overlap. Null without regions or positive mass.",
    )
    # faithfulness (only when asked for)
    confidence_drop: float | None = Field(
        None,
        description="(p - p_masked) / p: the target's probability p on the input, p_masked on"
        " the input times the normalised map; negative = the masked input scores higher.",
    )
    masked_probability: float | None = Field(
        None, description="The target's probability on the input times the normalised map."
    )
    deletion_auc: float | None = Field(
        None, description="Area under deletion_curve over the removed fraction in [0, 1]."
    )
    insertion_auc: float | None = Field(
        None, description="Area under insertion_curve over the inserted fraction in [0, 1]."
    )
    deletion_curve: list[float] | None = Field(
        None, description="Target probability after removing the top k/steps of pixels, k=0..steps."
    )
    insertion_curve: list[float] | None = Field(
        None, description="Target probability after inserting the top k/steps of pixels."
    )


class ExplainResult(BaseModel):
    image: int
    target: Target
    heatmap: str | None = None
    overlay: str | None = None
    array: ArrayOut | None = None
    stats: Stats | None = None
    extras: dict[str, Any] | None = None


class ModelProvenance(BaseModel):
    name: str
    version: str
    sha256: str


class Provenance(BaseModel):
    """Everything that determined the maps: post method, layer (= layers), options, render and
    targets again to the same model version and software to get the same arrays."""

    model: ModelProvenance
    cnnvis: str = Field(..., description="cnnvis version.")
    onnxruntime: str
    companion_builder: str = Field(..., description="Version of the companion graph builder.")
    provider: str
    method: str
    layers: list[str] = Field(..., description="The layers used, 'auto' resolved.")
    options: dict[str, Any] = Field(..., description="Every method option, defaults filled in.")
    render: Render
    targets: Targets = Field(..., description="As posted.")
    seed: int | None = Field(None, description="The method's random seed, if it has one.")
    faithfulness: Faithfulness | None = None
    regions: dict[str, tuple[float, float, float, float]] = Field(
        default_factory=dict, description="The regions measured: the card's and the request's."
    )


class ExplainResponse(BaseModel):
    model: dict[str, str]
    method: str
    layers: list[str]
    provider: str
    results: list[ExplainResult]
    timings_ms: dict[str, float]
    provenance: Provenance
