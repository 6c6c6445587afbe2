"""How images travel in JSON bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

ImagesField = Annotated[
    list[str],
    Field(
        min_length=1,
        description="Base64-encoded images (PNG, JPEG, WebP, BMP, GIF, TIFF); a"
        " `data:image/...;base64,` prefix is accepted.",
    ),
]
