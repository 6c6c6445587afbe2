"""The OpenAPI document is the contract: an accidental change fails here.

After an intended change, regenerate with
``CNNVIS_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/service/test_openapi_snapshot.py``
and commit the diff of tests/snapshots/openapi.json with the change that caused it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from service.app import create_app
from service.settings import Settings

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "openapi.json"


def test_openapi_matches_snapshot(tmp_path: Path) -> None:
    spec = create_app(Settings(store=tmp_path)).openapi()
    text = json.dumps(spec, indent=1, sort_keys=True) + "\n"
    if os.environ.get("CNNVIS_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), "no snapshot yet: run with CNNVIS_UPDATE_SNAPSHOTS=1"
    assert json.loads(SNAPSHOT.read_text()) == json.loads(text), (
        "the OpenAPI document changed; if intended, regenerate the snapshot (see docstring)"
    )


def test_every_route_documents_problem_details(tmp_path: Path) -> None:
    spec = create_app(Settings(store=tmp_path)).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "application/problem+json" in json.dumps(operation["responses"]), (method, path)
