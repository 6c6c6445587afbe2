"""A request field that passed the schema but not a limit of this deployment: a 422 naming it."""

from __future__ import annotations

from service.errors import InvalidRequest


def bad_field(loc: str, message: str) -> InvalidRequest:
    """``loc``: the dotted field path in the body (``transforms.2.dx``)."""
    parts = ["body", *loc.split(".")]
    error = {"loc": parts, "msg": message, "type": "value_error"}
    return InvalidRequest(f"{loc}: {message}", errors=[error])


def at_most(loc: str, value: float, limit: float, setting: str) -> None:
    if value > limit:
        raise bad_field(loc, f"{value:g} exceeds the limit {limit:g} ({setting})")
