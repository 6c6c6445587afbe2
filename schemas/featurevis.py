"""Feature visualisation, DeepDream and inversion jobs (docs/featurevis.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ObjectiveType = Literal["neuron", "channel", "layer", "class", "direction", "diversity"]
Rule = Literal["standard", "guided", "deconvnet"]


class Objective(BaseModel):
    """One objective, or a combination: ``sum`` (weighted terms; a difference is a term with
    weight -1) or ``interpolate`` (two objectives morphed across the batch)."""

    type: ObjectiveType | None = Field(
        None,
        description="neuron: A[channel, y, x]; channel: mean of A[channel]; layer: mean of A^2"
        " (DeepDream); class: the pre-softmax logit; direction: mean of sum_k vector_k A[k];"
        " diversity: Gram-matrix cosine penalty across the batch.",
    )
    layer: str | None = Field(
        None, description='A tensor from /layers, or "auto" (the default layer).'
    )
    channel: int | None = Field(None, ge=0)
    x: int | None = Field(None, ge=0, description="neuron: column (default the centre).")
    y: int | None = Field(None, ge=0, description="neuron: row (default the centre).")
    class_: int | str | None = Field(None, alias="class", description="class: index or label name.")
    vector: list[float] | None = Field(None, description="direction: one weight per channel.")
    weight: float = Field(1.0, description="Multiplies this objective.")
    sum: list[Objective] | None = Field(None, min_length=1, max_length=16)
    interpolate: list[Objective] | None = Field(None, min_length=2, max_length=2)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Objective:
        kinds = [self.type is not None, self.sum is not None, self.interpolate is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of type, sum or interpolate")
        return self


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["fourier", "pixels"] = Field(
        "fourier", description="Decorrelated Fourier space (1/f scaled) or plain pixels."
    )
    decorrelate: bool = Field(True, description="Mix colours by sqrt(ImageNet covariance).")
    sd: float = Field(0.01, ge=0, le=10, description="Initial parameters ~ N(0, sd^2).")
    decay_power: float = Field(1.0, ge=0, le=4, description="Fourier scale 1 / f^decay_power.")


class Transforms(BaseModel):
    """Lucid's standard transforms; ``enabled: false`` for none."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    pad: int = Field(12, ge=0, le=64)
    jitter: int = Field(8, ge=0, le=64)
    scales: list[float] = Field(
        default_factory=lambda: [1 + (i - 5) / 50 for i in range(11)],
        max_length=64,
        description="Scale factors drawn from uniformly.",
    )
    angles: list[float] = Field(
        default_factory=lambda: [float(a) for a in range(-10, 11)] + [0.0] * 5,
        max_length=128,
        description="Rotation angles (degrees) drawn from uniformly.",
    )
    jitter2: int = Field(4, ge=0, le=64)

    @model_validator(mode="after")
    def _positive(self) -> Transforms:
        if any(not 0.25 <= s <= 4 for s in self.scales):
            raise ValueError("scales must lie in [0.25, 4]")
        return self


class Priors(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tv: float = Field(0.0, ge=0, description="Weight of the total-variation prior.")
    l2: float = Field(0.0, ge=0, description="Weight of the alpha-norm prior.")
    alpha: float = Field(2.0, ge=1, le=8, description="Exponent of the alpha-norm prior.")


class FeatureVisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    objective: Objective
    param: Param = Field(default_factory=Param)
    transforms: Transforms = Field(default_factory=Transforms)
    priors: Priors = Field(default_factory=Priors)
    steps: int = Field(512, ge=1)
    lr: float = Field(0.05, gt=0, le=10)
    size: int = Field(128, ge=8, description="Side of the optimised image (then upsampled).")
    batch: int = Field(1, ge=1)
    seed: int | None = Field(None, description="Fixes the initial image and the transforms.")
    rule: Rule = Field("standard", description="ReLU backward rule of the companion graph.")


class DeepDreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(..., min_length=1, max_length=1, description="One base64 image.")
    objective: Objective = Field(
        default_factory=lambda: Objective(type="layer", layer="auto"),
        description="Default: mean of A^2 at the default layer.",
    )
    octaves: int = Field(3, ge=1, le=8)
    octave_scale: float = Field(1.4, ge=1.0, le=4.0)
    steps: int = Field(20, ge=1, description="Gradient-ascent steps per octave.")
    step_size: float = Field(0.01, gt=0, le=1)
    jitter: int = Field(8, ge=0, le=64)
    max_value: float | None = Field(None, description="Stop an octave once above this.")
    size: int | None = Field(
        None, ge=8, description="Longer side of the dreamed image (default the model's)."
    )
    seed: int | None = None
    rule: Rule = "standard"


class InvertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(..., min_length=1, max_length=1, description="One base64 image.")
    layer: str = Field("auto", description="The layer whose features are matched.")
    param: Param = Field(default_factory=Param)
    transforms: Transforms = Field(default_factory=Transforms)
    priors: Priors = Field(default_factory=lambda: Priors(tv=2.0, l2=0.0))
    steps: int = Field(512, ge=1)
    lr: float = Field(0.05, gt=0, le=10)
    size: int = Field(128, ge=8)
    seed: int | None = None
    rule: Rule = "standard"


JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobProgress(BaseModel):
    step: int
    steps: int
    objective: float | None = None
    elapsed_s: float = 0.0
    remaining_s: float | None = Field(None, description="Estimated from the mean step time.")


class JobResult(BaseModel):
    images: list[str] = Field(..., description="base64 PNGs, one per batch row.")
    curve: list[float] = Field(..., description="The objective at each step.")
    initial: float = Field(..., description="Objective of the initial image (untransformed).")
    final: float = Field(..., description="Objective of the final image (untransformed).")
    seconds: float


class JobInfo(BaseModel):
    id: str
    kind: Literal["featurevis", "deepdream", "invert"]
    model: dict[str, str]
    state: JobState
    created: float
    started: float | None = None
    finished: float | None = None
    progress: JobProgress
    error: str | None = None
    request: dict[str, Any] = Field(default_factory=dict, description="The job's parameters.")
    result: JobResult | None = None


class JobList(BaseModel):
    jobs: list[JobInfo]
