"""The service must import and serve without torch installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import base64, io, sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, BlockTorch())

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image
    from service.app import create_app
    from service.settings import Settings
    from tests.conftest import tiny_card, tiny_classifier

    with TestClient(create_app(Settings(store=sys.argv[1]))) as client:
        files = {"model": ("m.onnx", tiny_classifier()),
                 "card": (None, tiny_card().model_dump_json())}
        assert client.post("/v1/models", files=files).status_code == 201
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
        r = client.post("/v1/models/tiny/predict",
                        json={"images": [base64.b64encode(buf.getvalue()).decode()]})
        assert r.status_code == 200, r.text
    assert not any(m.split(".")[0] == "torch" for m in sys.modules)
    print("ok")
    """
)


def test_service_runs_without_torch(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
