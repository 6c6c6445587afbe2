"""Explain end to end over HTTP vs the plain onnxruntime forward vs pytorch-grad-cam, one run.

    .venv/bin/python bench/explain_bench.py [--repeat 20] [--quick] [--targets-only]

resnet50 (torchvision, seeded random weights), one 224x224 image (the skimage cat, resized),
on this machine's CPU. Prints a Markdown table for docs/BENCHMARKS.md: each method's p50 over
HTTP (decode, preprocess, onnxruntime, method, render, PNG, base64, JSON) and its ratio to the
plain forward measured in the same run; GradCAM against pytorch-grad-cam in-process; and
Score-CAM against pytorch-grad-cam's ScoreCAM at equal batch size (resnet18, 512 channels).

First, "whatever is asked" (issue 10): JSON bodies with the base64 PNG, ``outputs:
["overlay"]``, for top1, an explicit class, top_k 5, and Eigen-CAM, saliency and guided
backprop; each with the server's own timings, against the plain forward and
pytorch-grad-cam's GradCAM (explicit target) timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import (
    Server,
    cat_png,
    export_torchvision,
    make_store,
    p50,
    time_it,
    torchvision_card,
)

METHODS = {  # method -> options keeping the slow ones bounded but honest
    "gradcam": {},
    "hirescam": {},
    "gradcam_elementwise": {},
    "gradcampp": {},
    "xgradcam": {},
    "layercam": {},
    "eigencam": {},
    "eigengradcam": {},
    "cam": {},
    "saliency": {},
    "inputxgradient": {},
    "guided_backprop": {},
    "deconvnet": {},
    "guided_gradcam": {},
    "smoothgrad": {"samples": 25},
    "integrated_gradients": {"steps": 50},
    "occlusion": {"window": 32, "stride": 16},
    "scorecam": {},
    "ablationcam": {},
}
SLOW = {"scorecam", "ablationcam", "occlusion", "smoothgrad", "integrated_gradients"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="skip the slow methods")
    parser.add_argument("--targets-only", action="store_true", help="only the first table")
    args = parser.parse_args()

    import httpx
    import onnxruntime as ort
    import torch
    import torchvision
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from service.imaging.preprocess import preprocess

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="cnnvis-bench-"))
    resnet50 = export_torchvision("resnet50")
    resnet18 = export_torchvision("resnet18")
    store = make_store(
        work / "store",
        {
            "resnet50": (resnet50, torchvision_card("resnet50")),
            "resnet18": (resnet18, torchvision_card("resnet18")),
        },
    )
    png = cat_png(224)
    import io

    from PIL import Image

    x = preprocess([Image.open(io.BytesIO(png))], torchvision_card("resnet50").input)  # type: ignore[attr-defined]

    options = ort.SessionOptions()  # as the server runs: no spin-waiting between runs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(resnet50, options, providers=["CPUExecutionProvider"])
    forward = p50(time_it(lambda: session.run(None, {"input": x}), args.repeat))

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    target = int(np.argmax(session.run(None, {"input": x})[0]))
    with GradCAM(model=net, target_layers=[net.layer4[-1]]) as cam:
        tensor = torch.from_numpy(x)
        ref_gradcam = p50(
            time_it(
                lambda: cam(input_tensor=tensor, targets=[ClassifierOutputTarget(target)]),
                args.repeat,
            )
        )

    rows = []
    server = Server(store, max_batch_size=1)
    try:
        client = httpx.Client(base_url=server.url, timeout=600)
        targets_table(
            client, png, lambda: session.run(None, {"input": x}), net, x, target, args.repeat
        )
        if args.targets_only:
            return
        for method, options in METHODS.items():
            if args.quick and method in SLOW:
                continue
            repeat = 2 if method in SLOW else args.repeat

            def call(method: str = method, options: dict = options) -> None:
                r = client.post(
                    "/v1/models/resnet50/explain",
                    params={"method": method, "options": json.dumps(options)},
                    files={"image": ("cat.png", png, "image/png")},
                )
                assert r.status_code == 200, (r.text[:300], server.log.read_text()[-3000:])

            rows.append((method, p50(time_it(call, repeat, warmup=1))))

        # Score-CAM at equal batch size on resnet18 (512 channels at 224x224)
        session18 = ort.InferenceSession(resnet18, providers=["CPUExecutionProvider"])
        target18 = int(np.argmax(session18.run(None, {"input": x})[0]))
        torch.manual_seed(0)
        net18 = torchvision.models.resnet18(weights=None).eval()
        with ScoreCAM(model=net18, target_layers=[net18.layer4[-1]]) as scorecam:
            scorecam.batch_size = 32
            ref_score = p50(
                time_it(
                    lambda: scorecam(
                        input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(target18)]
                    ),
                    2,
                    warmup=1,
                )
            )

        def ours_score() -> None:
            r = client.post(
                "/v1/models/resnet18/explain",
                params={
                    "method": "scorecam",
                    "targets": json.dumps([target18]),
                    "options": json.dumps({"batch_size": 32}),
                },
                files={"image": ("cat.png", png, "image/png")},
            )
            assert r.status_code == 200, r.text[:300]

        ours_scorecam = p50(time_it(ours_score, 2, warmup=1))
    finally:
        server.stop()

    print(f"plain onnxruntime forward, resnet50, 1x3x224x224: p50 {forward:.1f} ms\n")
    print("| method | p50 over HTTP (ms) | ratio to plain forward |")
    print("|---|---:|---:|")
    for method, ms in rows:
        print(f"| {method} | {ms:.1f} | {ms / forward:.2f}x |")
    gradcam = dict(rows)["gradcam"]
    print(
        f"\npytorch-grad-cam GradCAM in-process (torch eager, 2 threads): p50 {ref_gradcam:.1f} ms;"
        f" cnnvis gradcam over HTTP is {ref_gradcam / gradcam:.2f}x faster"
    )
    print(
        f"Score-CAM, resnet18, batch 32: pytorch-grad-cam {ref_score:.0f} ms, cnnvis over HTTP"
        f" {ours_scorecam:.0f} ms (ratio {ours_scorecam / ref_score:.2f})"
    )


SETTLE_S = 0.3
ASKED = [  # (label, method, targets)
    ("gradcam, top1", "gradcam", "top1"),
    ("gradcam, explicit class", "gradcam", "explicit"),
    ("gradcam, top_k 5", "gradcam", {"top_k": 5}),
    ("eigencam", "eigencam", "top1"),
    ("saliency, top1", "saliency", "top1"),
    ("saliency, explicit class", "saliency", "explicit"),
    ("guided_backprop, top1", "guided_backprop", "top1"),
]


def targets_table(
    client: object,
    png: bytes,
    forward: Callable[[], object],
    net: object,
    x: np.ndarray,
    target: int,
    repeat: int,
) -> None:
    """JSON bodies, overlay only: p50 over HTTP, the server's timings, and ratios to the
    in-process forward and pytorch-grad-cam's GradCAM, all timed round-robin (each round
    times every contender once), so the machine's drift spreads evenly."""
    import base64

    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    image = base64.b64encode(png).decode()
    calls: dict[str, Callable[[], object]] = {"forward": forward}
    timings: dict[str, dict[str, float]] = {}
    for label, method, targets in ASKED:
        body = {
            "images": [image],
            "method": method,
            "targets": [target] if targets == "explicit" else targets,
            "outputs": ["overlay"],
        }
        timings[label] = {}

        def call(body: dict = body, seen: dict = timings[label]) -> None:
            r = client.post("/v1/models/resnet50/explain", json=body)  # type: ignore[attr-defined]
            assert r.status_code == 200, r.text[:300]
            seen.update(r.json()["timings_ms"])

        calls[label] = call
    with GradCAM(model=net, target_layers=[net.layer4[-1]]) as cam:  # type: ignore[attr-defined]
        tensor = torch.from_numpy(x)
        calls["pytorch-grad-cam"] = lambda: cam(
            input_tensor=tensor, targets=[ClassifierOutputTarget(target)]
        )
        samples = round_robin(calls, repeat)
    forward_ms, ref_ms = p50(samples["forward"]), p50(samples["pytorch-grad-cam"])
    print(f"plain onnxruntime forward, resnet50, 1x3x224x224: p50 {forward_ms:.1f} ms")
    print(f"pytorch-grad-cam GradCAM, explicit class, in-process: p50 {ref_ms:.1f} ms\n")
    print(
        "| request (outputs: overlay) | p50 over HTTP (ms) | x forward"
        " | pytorch-grad-cam GradCAM / this | server timings (ms, last call) |"
    )
    print("|---|---:|---:|---:|---|")
    for label, method, _ in ASKED:
        ms = p50(samples[label])
        shown = ", ".join(f"{k} {v:.1f}" for k, v in timings[label].items() if k != "total")
        versus = f"{ref_ms / ms:.1f}x" if method == "gradcam" else "-"
        print(f"| {label} | {ms:.1f} | {ms / forward_ms:.2f}x | {versus} | {shown} |")
    print()


def round_robin(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Milliseconds of each call, ``repeat`` rounds after one warm-up round. A pause after
    each call lets thread pools that spin-wait (torch's OpenMP) go idle before the next."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeat + 1):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn()
            if round_:
                samples[name].append((time.perf_counter() - started) * 1000)
            time.sleep(SETTLE_S)
    return samples


if __name__ == "__main__":
    main()
