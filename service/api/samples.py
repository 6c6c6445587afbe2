"""GET /v1/samples: the photos shipped with cnnvis, to try the API with nothing at hand."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from models_store.errors import ProblemError

router = APIRouter(prefix="/v1/samples", tags=["samples"])
_FOLDER = resources.files("service") / "samples"


class SampleNotFound(ProblemError):
    status = 404
    title = "Sample not found"
    slug = "sample-not-found"


def sample_names() -> list[str]:
    return sorted(p.name for p in _FOLDER.iterdir() if p.name.endswith(".jpg"))


@router.get("", summary="The sample photos (see service/samples/NOTICE.md for their licences)")
def list_samples() -> dict[str, list[str]]:
    return {"samples": sample_names()}


@router.get(
    "/{name}",
    summary="One sample photo, as JPEG",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def get_sample(name: str) -> Response:
    if name not in sample_names():  # only the listed files: no path ever reaches the disk
        raise SampleNotFound(f"no sample {name!r}; samples: {', '.join(sample_names())}")
    data = (_FOLDER / name).read_bytes()
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
