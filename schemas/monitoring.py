"""Attribution monitoring: the card's ``monitoring`` block, baselines and drift reports.

See docs/monitoring.md. A baseline is, per (model version, method, class), the mean pooled
attribution map and the mean share of each named region over a reference set; drift compares
the last explanations of each class against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.explain import Method, Render
from schemas.images import ImagesField
from schemas.sampling import ClassRef, SamplingPolicy

ALL_CLASSES = "*"


class MonitoringSpec(BaseModel):
    """What to watch of a model in production (the card's ``monitoring`` block)."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassRef] = Field(
        default_factory=list,
        max_length=100,
        description="Classes (labels or indices) that get their own drift gauges in /metrics;"
        ' every other class still counts in the all-classes gauge (class="*") and in'
        " GET /drift. Labels must be the card's labels, indices below the number of classes.",
    )
    baseline_requests: int = Field(
        0,
        ge=0,
        le=100_000,
        description="0 = baselines only from POST /baselines. N > 0: for a class with no"
        " baseline, the first N explained requests of each method become its baseline,"
        " frozen and stored once N is reached.",
    )
    sampling: SamplingPolicy | None = Field(
        None, description="Explain a share of /predict traffic in the background."
    )


def check_classes(classes: Sequence[int | str], labels: Sequence[str] | None, where: str) -> None:
    """Raise ValueError naming ``where`` for a label the card lacks or an index past them."""
    known = set(labels or ())
    for i, c in enumerate(classes):
        if isinstance(c, int):
            if labels is not None and c >= len(labels):
                raise ValueError(
                    f"{where}[{i}]: class index {c} is out of range (the card has"
                    f" {len(labels)} labels)"
                )
        elif labels is None:
            raise ValueError(
                f"{where}[{i}]: {c!r} is a label, but the card has no labels; use indices"
            )
        elif c not in known:
            raise ValueError(f"{where}[{i}]: {c!r} is not one of the card's labels")


def out_of_range(spec: MonitoringSpec | None, classes: int) -> list[dict[str, Any]]:
    """Validation errors for class indices at or past ``classes`` (the model's output width;
    needed when the card has no labels to check against)."""
    if spec is None:
        return []
    lists: list[tuple[str, Sequence[int | str]]] = [("classes", spec.classes)]
    if spec.sampling is not None and spec.sampling.classes is not None:
        lists.append(("sampling.classes", spec.sampling.classes))
    errors = []
    for where, values in lists:
        for i, c in enumerate(values):
            if isinstance(c, int) and c >= classes:
                errors.append(
                    {
                        "loc": ["monitoring", *where.split("."), str(i)],
                        "msg": f"class index {c} is out of range (the model outputs"
                        f" {classes} scores)",
                        "type": "value_error",
                    }
                )
    return errors


# ---- POST/GET/DELETE /v1/models/{name}/baselines -------------------------------------------


class BaselineRequest(BaseModel):
    """A reference set: images explained like an explain request, averaged per class."""

    model_config = ConfigDict(extra="forbid")

    images: ImagesField
    method: Method = "gradcam"
    layer: str | list[str] = Field("auto", description="As the explain request's layer.")
    targets: Literal["top1"] | list[ClassRef] = Field(
        "top1",
        description="top1 = each image's predicted class; or one class (index or label) per image.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Method parameters.")
    render: Render = Field(
        default_factory=Render,
        description="As the explain request's; the monitored traffic should be rendered alike.",
    )
    replace: bool = Field(
        False,
        description="true: this set becomes the method's whole baseline. false: classes fold"
        " into the stored posted ones (count-weighted), so a large set can be posted in parts.",
    )

    @field_validator("targets")
    @classmethod
    def _one_per_image(cls, targets: object, info: ValidationInfo) -> object:
        images = info.data.get("images")
        if isinstance(targets, list) and images is not None and len(targets) != len(images):
            raise ValueError(
                f"targets: one class per image; {len(images)} images, {len(targets)} targets"
            )
        return targets


class BaselineClass(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: int = Field(..., alias="class", description="Class index.")
    label: str | None
    count: int = Field(..., description="Maps averaged into the baseline.")
    source: Literal["posted", "requests"]
    updated: str = Field(..., description="ISO 8601, UTC.")
    regions: dict[str, float] = Field(default_factory=dict, description="Mean share per region.")


class BaselineInfo(BaseModel):
    method: str
    grid: int = Field(..., description="Pooled grid side G (G x G cells).")
    created: str
    skipped: int = Field(..., description="Reference maps with no positive mass (left out).")
    classes: list[BaselineClass]


class BaselineList(BaseModel):
    model: dict[str, str]
    baselines: list[BaselineInfo]


class BaselinesDeleted(BaseModel):
    model: dict[str, str]
    methods: list[str]


# ---- GET /v1/models/{name}/drift --------------------------------------------------------------


class WindowInfo(BaseModel):
    count: int = Field(..., description="Maps in this replica's window (at most the limit).")
    first: str | None = Field(None, description="ISO 8601 time of the oldest map in it.")
    last: str | None = Field(None, description="ISO 8601 time of the newest.")


class BaselineRef(BaseModel):
    count: int
    source: Literal["posted", "requests"]


class RegionShiftOut(BaseModel):
    baseline: float = Field(..., description="Mean share in the baseline.")
    window: float = Field(..., description="Mean share in the window.")
    shift: float = Field(..., description="window - baseline.")


class ClassDrift(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: int | Literal["*"] = Field(..., alias="class", description='Index, or "*" = all.')
    label: str | None
    baseline: BaselineRef
    window: WindowInfo
    jsd: float | None = Field(
        None,
        description="Jensen-Shannon divergence (bits, 0..1) between the window's and the"
        " baseline's mean pooled maps; null while the window is empty.",
    )
    region_shift: dict[str, RegionShiftOut] = Field(default_factory=dict)


class PendingBaseline(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: int = Field(..., alias="class")
    label: str | None
    count: int = Field(..., description="Requests collected so far on this replica.")
    needed: int = Field(..., description="The card's monitoring.baseline_requests.")


class DriftReport(BaseModel):
    model: dict[str, str]
    method: str
    grid: int
    window_limit: int = Field(..., description="CNNVIS_MONITORING_WINDOW.")
    message: str | None = Field(None, description="Why there is nothing to compare, if so.")
    classes: list[ClassDrift] = Field(
        default_factory=list, description='"*" first, then the baselined classes by index.'
    )
    pending: list[PendingBaseline] = Field(
        default_factory=list, description="Baselines still being collected from requests."
    )
    skipped: int = Field(0, description="Maps with no positive mass, left out (this replica).")
    dropped: int = Field(0, description="Observations dropped on a full queue (this replica).")
