"""Attribution drift, worked end to end on the pretrained EfficientNet-Lite0.

    .venv/bin/python bench/drift_demo.py [--per-step 16] [--steps 5] [--store DIR]

1. A store with ``efficientnet-lite0`` (exported once with torch, the ``zoo`` extra) whose card
   watches a ``border`` region (the bottom 30% of the input window).
2. A reference set: scikit-image's chelsea, coffee, astronaut and rocket, flipped and cropped
   (set A), posted as the Grad-CAM baseline with each photo's own predicted class as target.
3. Windows of ``--per-step`` images (other flips and crops, set B): at step k a share k/steps of
   them is *drifted* — the photo shrunk and pasted into the border strip over a plain grey
   background, so the evidence for the same class now sits in the border. The monitor's window
   is exactly one step long (``CNNVIS_MONITORING_WINDOW``), so each step is read on its own.
4. After every step: the all-classes JSD and the border's share shift from GET /drift, and the
   gauge from /metrics. They should rise with the drifted share.

Runs in-process (FastAPI's TestClient): no server, no network.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
BORDER = (0.0, 0.7, 1.0, 1.0)  # normalised [x0, y0, x1, y1]: the bottom 30% of the window


def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS}


def augment(image: Image.Image, k: int) -> Image.Image:
    """Variant ``k``: a flip or not, and a crop of 80-100% of the image at some offset."""
    rng = np.random.default_rng(k)
    if k % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = image.size
    scale = rng.uniform(0.8, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = int(rng.uniform(0, w - cw + 1)), int(rng.uniform(0, h - ch + 1))
    return image.crop((x0, y0, x0 + cw, y0 + ch)).resize((224, 224), Image.Resampling.BILINEAR)


def drifted(image: Image.Image, k: int) -> Image.Image:
    """The photo shrunk into the border strip (bottom 30%) over plain grey."""
    rng = np.random.default_rng(1000 + k)
    canvas = Image.new("RGB", (224, 224), (128, 128, 128))
    side = 64  # fits inside the 67-pixel strip
    small = image.resize((side, side), Image.Resampling.BILINEAR)
    x = int(rng.uniform(0, 224 - side))
    canvas.paste(small, (x, 224 - side - 1))
    return canvas


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-step", type=int, default=16, help="images per window")
    parser.add_argument("--steps", type=int, default=4, help="drift steps after step 0")
    parser.add_argument(
        "--reference", type=int, default=6, help="variants per photo in the baseline"
    )
    parser.add_argument(
        "--store", type=Path, default=None, help="store folder (default: a temp one)"
    )
    args = parser.parse_args()

    import os

    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from fastapi.testclient import TestClient

    from models_store.store import ModelStore
    from service.app import create_app
    from service.settings import Settings
    from service.zoo import efficientnet_lite0

    root = args.store or Path(tempfile.mkdtemp(prefix="cnnvis-drift-"))
    store = ModelStore(root)
    if "efficientnet-lite0" not in store.names():
        started = time.perf_counter()
        data, card = efficientnet_lite0()
        card = card.model_copy(update={"regions": {"border": BORDER}})
        store.add(data, card)
        print(f"exported efficientnet-lite0 into {root} in {time.perf_counter() - started:.0f} s")
    settings = Settings(
        store=root,
        providers=["CPUExecutionProvider"],
        monitoring_window=args.per_step,
        sampling=False,
    )
    url = "/v1/models/efficientnet-lite0"
    pictures = photos()
    with TestClient(create_app(settings)) as client:
        # each photo's own class, from the untouched photo
        predicted = client.post(
            f"{url}/predict", json={"images": [b64(p) for p in pictures.values()], "top_k": 1}
        ).json()["predictions"]
        classes = {name: p[0]["index"] for name, p in zip(pictures, predicted, strict=True)}
        labels = {name: p[0]["label"] for name, p in zip(pictures, predicted, strict=True)}
        print("classes:", ", ".join(f"{n} -> {labels[n]} ({classes[n]})" for n in PHOTOS))

        reference = [(n, augment(pictures[n], k)) for k in range(args.reference) for n in PHOTOS]
        started = time.perf_counter()
        posted = client.post(
            f"{url}/baselines",
            json={
                "images": [b64(img) for _, img in reference],
                "targets": [classes[n] for n, _ in reference],
                "replace": True,
            },
        )
        posted.raise_for_status()
        print(
            f"baseline: {len(reference)} reference images in"
            f" {time.perf_counter() - started:.1f} s;"
            f" per class {[c['count'] for c in posted.json()['classes']]}"
        )

        window = [(n, augment(pictures[n], 100 + k)) for k in range(args.per_step) for n in PHOTOS]
        window = window[: args.per_step]
        print(f"\n{'drifted':>8} {'jsd (*)':>9} {'border shift':>13} {'window':>7}")
        rows = []
        for step in range(args.steps + 1):
            share = step / args.steps
            n_drifted = round(share * len(window))
            images, targets = [], []
            for i, (name, img) in enumerate(window):
                images.append(b64(drifted(img, i) if i < n_drifted else img))
                targets.append([classes[name]])
            for i in range(0, len(images), settings.max_images):
                response = client.post(
                    f"{url}/explain",
                    json={
                        "images": images[i : i + settings.max_images],
                        "targets": targets[i : i + settings.max_images],
                        "outputs": ["stats"],
                    },
                )
                response.raise_for_status()
            assert client.app.state.cnnvis.monitor.flush(60)  # type: ignore[attr-defined]
            drift = client.get(f"{url}/drift").json()
            everything = drift["classes"][0]
            shift = everything["region_shift"]["border"]["shift"]
            rows.append((share, everything["jsd"], shift))
            print(
                f"{share:>8.0%} {everything['jsd']:>9.4f} {shift:>+13.4f}"
                f" {everything['window']['count']:>7d}"
            )
        gauge = [
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("cnnvis_attribution_drift_jsd{")
        ]
        print("\n/metrics:", *gauge, sep="\n  ")
    jsds = [r[1] for r in rows]
    shifts = [r[2] for r in rows]
    rising = all(b > a for a, b in itertools.pairwise(jsds)) and all(
        b > a for a, b in itertools.pairwise(shifts)
    )
    print(f"\nJSD and border shift rise monotonically: {rising}")


if __name__ == "__main__":
    main()
