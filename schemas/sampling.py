"""Sampled explanations: which /predict images the service explains on its own, in the
background, for monitoring (docs/monitoring.md, "Sampled explanations").

The policy sits in the card's ``monitoring.sampling`` block::

    "monitoring": {"sampling": {"fraction": 0.1, "below_confidence": 0.6,
                                "classes": ["tabby", 285], "method": "gradcam"}}

An image is explained when its top class passes both filters (``below_confidence``,
``classes``) and then a draw falls below ``fraction``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.explain import Method

ClassRef = (
    Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(min_length=1, max_length=256)]
)


class SamplingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the eligible /predict images that are explained (0 = none,"
        " 1 = every one).",
    )
    below_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Only images whose top probability is below this; null = any confidence.",
    )
    classes: list[ClassRef] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Only images whose top class is one of these (labels or indices); null ="
        " every class. Labels must be the card's labels.",
    )
    method: Method = Field("gradcam", description="The explanation method of the samples.")
    layer: str | list[str] = Field("auto", description="As the explain request's layer.")

    def class_indices(self, labels: Sequence[str] | None) -> frozenset[int] | None:
        """``classes`` as class indices (labels looked up in ``labels``); None = every class.
        Labels that are not in ``labels`` are skipped (registration refuses them)."""
        if self.classes is None:
            return None
        lookup = {label: i for i, label in enumerate(labels or ())}
        out = set()
        for c in self.classes:
            if isinstance(c, int):
                out.add(c)
            elif c in lookup:
                out.add(lookup[c])
        return frozenset(out)


def check_sampling_classes(
    policy: SamplingPolicy | None,
    labels: Sequence[str] | None,
    where: str = "monitoring.sampling.classes",
) -> None:
    """Raise ValueError naming ``where`` when a class is not one of ``labels`` (a label the
    card does not have; an index past the labels; any label when the card has none). Call it
    from the card's validator, where the labels are known."""
    if policy is None or policy.classes is None:
        return
    known = set(labels or ())
    for c in policy.classes:
        if isinstance(c, int):
            if c < 0 or (labels is not None and c >= len(labels)):
                bound = f" (the card has {len(labels)} labels)" if labels is not None else ""
                raise ValueError(f"{where}: class index {c} is out of range{bound}")
        elif c not in known:
            if labels is None:
                raise ValueError(
                    f"{where}: class {c!r} is a label, but the card has no labels; use indices"
                )
            raise ValueError(f"{where}: {c!r} is not one of the card's labels")
