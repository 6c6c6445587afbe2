"""Make the pictures of docs/featurevis.md on the pretrained EfficientNet-Lite0.

    .venv/bin/python bench/featurevis_gallery.py [--store store] [--steps 512] [--only gallery]

* ``docs/featurevis/gallery/``: a few channels of three layers (early, mid, late), each made
  by the ``cnnvis featurevis`` command written next to it in ``COMMANDS.md`` (defaults:
  512 steps, 128 px, Fourier, standard transforms, seed 0);
* ``docs/featurevis/methods/``: one picture per objective and parameter, made through the
  same job functions the HTTP endpoints run, with the request body of each in
  ``COMMANDS.md`` (``--method-steps``, 256 by default, to keep the run short).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "efficientnet-lite0"
LAYERS = {  # early, mid, late block outputs (GET /layers lists them)
    "early": "/_blocks.2/Add_output_0",
    "mid": "/_blocks.7/Add_output_0",
    "late": "/_blocks.14/Add_output_0",
}
CHANNELS = [0, 1, 2]
DOCS = ROOT / "docs" / "featurevis"
MID = LAYERS["mid"]

METHODS: dict[str, tuple[str, dict]] = {
    # name: (endpoint, request body); images are the cat sample where one is posted
    "neuron": ("featurevis", {"objective": {"type": "neuron", "layer": MID, "channel": 7}}),
    "channel": ("featurevis", {"objective": {"type": "channel", "layer": MID, "channel": 7}}),
    "layer": ("featurevis", {"objective": {"type": "layer", "layer": MID}}),
    "class-tabby": ("featurevis", {"objective": {"type": "class", "class": "tabby"}}),
    "direction": (
        "featurevis",
        {"objective": {"type": "direction", "layer": MID, "vector": "random(80, seed 0)"}},
    ),
    "sum": (
        "featurevis",
        {"objective": {"sum": [
            {"type": "channel", "layer": MID, "channel": 7},
            {"type": "channel", "layer": MID, "channel": 12},
        ]}},
    ),
    "difference": (
        "featurevis",
        {"objective": {"sum": [
            {"type": "channel", "layer": MID, "channel": 7},
            {"type": "channel", "layer": MID, "channel": 12, "weight": -1},
        ]}},
    ),
    "interpolate": (
        "featurevis",
        {"batch": 3, "objective": {"interpolate": [
            {"type": "channel", "layer": MID, "channel": 7},
            {"type": "channel", "layer": MID, "channel": 12},
        ]}},
    ),
    "diversity": (
        "featurevis",
        {"batch": 3, "objective": {"sum": [
            {"type": "channel", "layer": MID, "channel": 7},
            {"type": "diversity", "layer": LAYERS["early"], "weight": 100},
        ]}},
    ),
    "param-pixels": (
        "featurevis",
        {"param": {"kind": "pixels"}, "objective": {"type": "channel", "layer": MID,
                                                    "channel": 7}},
    ),
    "param-no-decorrelate": (
        "featurevis",
        {"param": {"decorrelate": False}, "objective": {"type": "channel", "layer": MID,
                                                        "channel": 7}},
    ),
    "param-no-transforms": (
        "featurevis",
        {"transforms": {"enabled": False}, "objective": {"type": "channel", "layer": MID,
                                                         "channel": 7}},
    ),
    "deepdream": ("deepdream", {"objective": {"sum": [
        {"type": "layer", "layer": LAYERS["mid"]},
        {"type": "layer", "layer": LAYERS["late"], "weight": 2},
    ]}}),
    "invert-mid": ("invert", {"layer": MID}),
    "invert-late": ("invert", {"layer": LAYERS["late"]}),
}  # fmt: skip


def mosaic(images: np.ndarray) -> np.ndarray:
    """(B, h, w, 3) -> one row with 4 px gaps."""
    b, h, w, _ = images.shape
    out = np.full((h, b * w + 4 * (b - 1), 3), 255, np.uint8)
    for k in range(b):
        out[:, k * (w + 4) : k * (w + 4) + w] = images[k]
    return out


def gallery(store: Path, steps: int) -> None:
    from service.cli import main

    folder = DOCS / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Commands that made these pictures", "", "```sh"]
    for tag, layer in LAYERS.items():
        for channel in CHANNELS:
            out = folder / f"{tag}-c{channel}.png"
            argv = ["--store", str(store), "featurevis", MODEL, "--layer", layer]
            argv += ["--channel", str(channel), "--seed", "0", "--steps", str(steps)]
            argv += ["-q", "-o", str(out.relative_to(ROOT))]
            started = time.perf_counter()
            assert main(argv) == 0
            print(f"{out.name}: {time.perf_counter() - started:.1f} s", flush=True)
            shown = [str(Path(a).relative_to(ROOT)) if a == str(store) and
                     Path(a).is_relative_to(ROOT) else a for a in argv]  # fmt: skip
            lines.append(".venv/bin/cnnvis " + shlex.join(shown))
    lines += ["```", ""]
    (folder / "COMMANDS.md").write_text("\n".join(lines))


def methods(store: Path, steps: int, only: set[str] | None) -> None:
    from PIL import Image

    from schemas.featurevis import DeepDreamRequest, FeatureVisRequest, InvertRequest
    from service.featurevis import jobs
    from service.imaging.render import encode_png
    from service.settings import Settings
    from service.state import AppState

    folder = DOCS / "methods"
    folder.mkdir(parents=True, exist_ok=True)
    cat = Image.open(ROOT / "service" / "samples" / "cat.jpg")
    state = AppState.open(Settings(store=store, monitoring=False, sampling=False))
    record = state.store.resolve(MODEL)
    notes = folder / "COMMANDS.md"
    lines = notes.read_text().splitlines() if notes.exists() else []
    if not lines:
        lines = [
            "# Request bodies that made these pictures",
            "",
            f"POST /v1/models/{MODEL}/<endpoint>; images: service/samples/cat.jpg.",
            "",
        ]
    try:
        for name, (endpoint, body) in METHODS.items():
            if only and name not in only:
                continue
            body = json.loads(json.dumps(body))
            objective = body.get("objective", {})
            if objective.get("vector") == "random(80, seed 0)":
                objective["vector"] = np.random.default_rng(0).normal(size=80).round(3).tolist()
            if endpoint != "deepdream":
                body.setdefault("steps", steps)
            body.setdefault("seed", 0)
            started = time.perf_counter()
            if endpoint == "featurevis":
                work = jobs.featurevis_work(state, record, FeatureVisRequest.model_validate(body))
            elif endpoint == "deepdream":
                req = DeepDreamRequest.model_validate({"images": ["-"], **body})
                work = jobs.deepdream_work(state, record, req, cat)
            else:
                req = InvertRequest.model_validate({"images": ["-"], **body})
                work = jobs.invert_work(state, record, req, cat)
            result = work(lambda *a: None, lambda: False)
            (folder / f"{name}.png").write_bytes(encode_png(mosaic(result.images)))
            took = time.perf_counter() - started
            print(f"{name}: {took:.1f} s, objective {result.initial:.3g} ->"
                  f" {result.final:.3g}", flush=True)  # fmt: skip
            shown = json.dumps(body)
            if "vector" in objective:
                shown = shown.replace(json.dumps(objective["vector"]), "[80 N(0,1) values]")
            lines = [ln for ln in lines if not ln.startswith(f"- `{name}.png`")]
            lines.append(f"- `{name}.png` ({endpoint}, {took:.0f} s): `{shown}`")
    finally:
        state.admission.close()
    notes.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=ROOT / "store")
    parser.add_argument("--steps", type=int, default=512, help="Gallery steps.")
    parser.add_argument("--method-steps", type=int, default=256)
    parser.add_argument("--only", choices=["gallery", "methods"])
    parser.add_argument("--names", nargs="*", help="Only these method pictures.")
    args = parser.parse_args()
    from models_store.store import ModelStore
    from service import zoo

    zoo.install(ModelStore(args.store), MODEL)
    if args.only in (None, "gallery"):
        gallery(args.store, args.steps)
    if args.only in (None, "methods"):
        methods(args.store, args.method_steps, set(args.names) if args.names else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
