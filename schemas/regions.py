"""Named regions of an image: the zones a team watches (a border, a watermark corner).

A region is a box ``[x0, y0, x1, y1]`` in normalised coordinates of the model's input window
(what the model sees: the posted image itself under ``resize=stretch``, the crop under
``center_crop``): 0 is the left/top edge, 1 the right/bottom edge. Regions may overlap; each
one's share is measured on its own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

RegionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


def _ordered(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError("a region is [x0, y0, x1, y1] with x1 > x0 and y1 > y0, each in [0, 1]")
    return box


NormalizedBox = Annotated[tuple[Unit, Unit, Unit, Unit], AfterValidator(_ordered)]
Regions = Annotated[dict[RegionName, NormalizedBox], Field(max_length=32)]
