"""On-disk cache of companion graphs under a model version's ``derived/`` folder.

Key: (model sha256, layers, ReLU rule, input gradient, score, BUILDER_VERSION,
AUTOSEED_VERSION). Stored graphs read an all-zero seed row as "the top class"
(autoseed.py). Each entry is
``companion-<key>.onnx`` plus ``companion-<key>.json`` (the spec). Both are written to a
temporary file in the same folder and moved into place with ``os.replace``; the spec goes last,
so an entry whose JSON exists is complete. Two processes building the same key at once both
build and the last rename wins with identical content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import onnx

from models_store.files import write_atomic

from .autoseed import AUTOSEED_VERSION, add_auto_seed
from .builder import BUILDER_VERSION, CompanionSpec, build_companion
from .context import ReluRule


def cache_key(
    sha256: str,
    layers: Sequence[str],
    rule: str,
    input_gradient: bool,
    score: str | None,
) -> str:
    payload = json.dumps(
        {
            "sha256": sha256,
            "layers": list(layers),
            "rule": rule,
            "input_gradient": bool(input_gradient),
            "score": score,
            "builder": BUILDER_VERSION,
            "autoseed": AUTOSEED_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _read_spec(path: Path) -> CompanionSpec | None:
    try:
        raw = json.loads(path.read_text())
        return CompanionSpec(
            image_input=raw["image_input"],
            seed=raw["seed"],
            score=raw["score"],
            layers=tuple(raw["layers"]),
            activations=tuple(raw["activations"]),
            gradients=tuple(raw["gradients"]),
            input_gradient=raw["input_gradient"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_build(
    derived_dir: Path,
    model_path: Path,
    sha256: str,
    layers: Sequence[str],
    rule: ReluRule,
    input_gradient: bool,
    score: str | None = None,
) -> tuple[Path, CompanionSpec]:
    """Path of the cached companion graph (building it on a miss) and its spec."""
    derived_dir = Path(derived_dir)
    key = cache_key(sha256, layers, rule, input_gradient, score)
    onnx_path = derived_dir / f"companion-{key}.onnx"
    spec_path = derived_dir / f"companion-{key}.json"
    if onnx_path.exists():
        spec = _read_spec(spec_path)
        if spec is not None:
            return onnx_path, spec
    derived_dir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    companion, spec = build_companion(
        model, tuple(layers), rule=rule, input_gradient=input_gradient, score=score
    )
    companion = add_auto_seed(companion, spec)  # zero seed rows = the top class
    write_atomic(onnx_path, companion.SerializeToString())
    write_atomic(spec_path, json.dumps(asdict(spec), indent=1).encode())
    return onnx_path, spec
