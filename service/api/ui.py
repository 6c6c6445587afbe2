"""The web explorer: static files under /ui that talk only to the public API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.api.samples import SampleNotFound

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
_FOLDER = resources.files("service") / "ui"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Everything comes from this origin; pictures from the API arrive as data: URLs.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:;"
    " style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class UiFileNotFound(SampleNotFound):
    title = "Not found"
    slug = "not-found"


def ui_files() -> dict[str, str]:
    """The shipped files (name -> media type); nothing else is ever read."""
    out = {}
    for path in _FOLDER.iterdir():
        suffix = "." + path.name.rsplit(".", 1)[-1]
        if suffix in _TYPES:
            out[path.name] = _TYPES[suffix]
    return out


@router.get("")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
def ui_index() -> Response:
    return ui_file("index.html")


@router.get("/{name}")
def ui_file(name: str) -> Response:
    files = ui_files()
    if name not in files:
        raise UiFileNotFound(f"no file {name!r} in the explorer")
    return Response((_FOLDER / name).read_bytes(), media_type=files[name], headers=_HEADERS)
