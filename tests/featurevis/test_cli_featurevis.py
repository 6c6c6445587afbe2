"""`cnnvis featurevis`: a progress bar on stderr, PNGs written, errors as exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from models_store.store import ModelStore
from service.cli import main
from tests.featurevis.test_api_jobs import _card, tiny_with_constant


def test_featurevis_writes_pngs_with_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    ModelStore(store).add(tiny_with_constant(), _card())
    out = tmp_path / "out" / "relu.png"
    argv = ["--store", str(store), "featurevis", "tiny", "--layer", "relu", "--channel", "2"]
    code = main([*argv, "--steps", "20", "--size", "16", "--seed", "0", "--batch", "2",
                 "-o", str(out), "--predict"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "20/20" in captured.err and "[" in captured.err
    assert "20 steps" in captured.out and "top-5" in captured.out
    for k in range(2):
        assert Image.open(out.with_name(f"relu-{k}.png")).size == (16, 16)
    code = main([*argv[:-1], "9", "--steps", "2", "-o", str(out)])
    assert code == 2 and "channel 9 is out of range" in capsys.readouterr().err
