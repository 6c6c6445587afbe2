"""The README's shell examples, run in order against a live server, as a new user would.

Every ```sh block of README.md runs (```text blocks need files of your own: a model, a card);
`localhost:8000` becomes this test's server, which serves the bundled EfficientNet-Lite0.
What they print and write is then checked: the files they save are the images they claim,
the answers are the ones the README describes, and no request but the deliberate bad one
was refused.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import serving

README = Path(__file__).resolve().parents[1] / "README.md"
PNG = b"\x89PNG\r\n\x1a\n"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def server(effnet_store: Path) -> Iterator[str]:
    with serving(effnet_store) as address:
        yield address


@pytest.mark.slow
def test_readme_shell_blocks_run_in_order(server: str, tmp_path: Path) -> None:
    blocks = shell_blocks(README.read_text())
    assert len(blocks) >= 2, "the README lost its runnable examples"
    # no pipefail: `curl ... | head -c 600` is how a person previews a long answer, and curl
    # then fails writing into the closed pipe (exit 23); what the blocks print is checked below
    script = "set -eu\n" + "\n".join(blocks).replace("localhost:8000", server)
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout

    assert (tmp_path / "cat.jpg").read_bytes()[:2] == b"\xff\xd8"
    saved = re.findall(r"-o (\S+\.png)", "\n".join(blocks))
    assert len(saved) >= 5
    for name in saved:
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
    for tiles in ("tiles0.png", "tiles1.png"):
        assert (tmp_path / tiles).read_bytes()[:8] == PNG, tiles

    assert '"label":"tabby"' in out  # predict: the cat is a tabby
    assert '"target":{"index":281' in out or '"index":281' in out
    assert '"models":["efficientnet-lite0"]' in out
    refused = re.findall(r'"type":"https://cnnvis.dev/problems/([a-z-]+)"', out)
    assert refused == ["invalid-image"], refused  # only the README's deliberate mistake
