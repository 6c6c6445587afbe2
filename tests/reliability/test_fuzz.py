"""Schema fuzzing: schemathesis drives every operation of our own OpenAPI document.

Whatever it generates, the service answers without a 5xx, and every response conforms to the
documented schema (status codes, content types, bodies). Run more examples with
CNNVIS_FUZZ_EXAMPLES=500 (bench/soak.py does).
"""

from __future__ import annotations

import os
import tempfile

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from models_store.store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_card, tiny_classifier

_ROOT = tempfile.mkdtemp(prefix="cnnvis-fuzz-")
ModelStore(_ROOT).add(tiny_classifier(), tiny_card())
# Registration and deletion stay behind a token, so the fuzzer cannot delete the model that
# the other operations need; their refusals (401) are still checked.
# Jobs the fuzzer starts (featurevis, deepdream, invert) stay small: they run on in the
# background for the rest of the worker's session otherwise.
APP = create_app(
    Settings(
        store=_ROOT,
        admin_token="fuzz-admin-token",
        max_batch_size=1,
        max_job_steps=4,
        max_job_size=16,
        max_job_batch=2,
    )
)
_LIFESPAN = TestClient(APP)
_LIFESPAN.__enter__()  # the app's state lives for the whole module

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
EXAMPLES = int(os.environ.get("CNNVIS_FUZZ_EXAMPLES", "25"))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors_and_documented_responses(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    case.validate_response(response)
