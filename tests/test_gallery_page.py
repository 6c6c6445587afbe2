"""docs/gallery.md (bench/gallery.py) shows every registered method on the sample photos."""

from __future__ import annotations

import re
from pathlib import Path

from service.explain.registry import METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_method_on_at_least_two_photos() -> None:
    page = (DOCS / "gallery.md").read_text()
    assert "make gallery" in page  # the command that made it is on the page
    for method in METHODS:
        row = next((line for line in page.splitlines() if line.startswith(f"| {method} |")), "")
        pictures = re.findall(r"\]\((gallery/[^)]+)\)", row)
        assert len(pictures) >= 2, method
        assert all((DOCS / p).is_file() for p in pictures), method
