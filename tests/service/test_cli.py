"""The cnnvis command line, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import tiny_card, tiny_classifier


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_add_list_build_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, card = tmp_path / "m.onnx", tmp_path / "card.json"
    model.write_bytes(tiny_classifier())
    card.write_text(tiny_card().model_dump_json())
    store = str(tmp_path / "store")

    code, out, _ = run(capsys, "--store", store, "models", "add", str(model), "--card", str(card))
    assert code == 0 and out.startswith("registered tiny@1")
    assert run(capsys, "--store", store, "models", "list")[1] == "tiny\t1\n"

    code, out, _ = run(capsys, "--store", store, "models", "build", "tiny", "--input-gradient")
    assert code == 0 and "tiny@1: relu [standard]" in out
    derived = list((tmp_path / "store" / "tiny" / "1" / "derived").glob("companion-*.onnx"))
    assert len(derived) == 1

    assert run(capsys, "--store", store, "models", "rm", "tiny@1")[1] == "removed tiny@1\n"
    code, _, err = run(capsys, "--store", store, "models", "rm", "tiny")
    assert code == 2 and "no model named 'tiny'" in err


def test_add_refusal_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, card = tmp_path / "m.onnx", tmp_path / "card.json"
    model.write_bytes(b"garbage")
    card.write_text(tiny_card().model_dump_json())
    code, _, err = run(
        capsys, "--store", str(tmp_path / "s"), "models", "add", str(model), "--card", str(card)
    )
    assert code == 2 and "not an ONNX model" in err
