"""Feature visualisation speed, side by side in one run (issue 12): seconds per optimisation
step at 224 x 224, cnnvis (companion graph on onnxruntime, numpy around it) against Lucent's
algorithm in torch eager on the same torchvision model.

torch-lucent (0.1.8, 2021) no longer installs against this torch (it pins kornia and the
old torch.irfft), so the torch side is Lucent's algorithm written here in torch: the same
parameterisation (decorrelated Fourier, 1/f, sigmoid), the same transforms (pad 12 constant
0.5, jitter 8, scale 0.9..1.1, rotate -10..10 with five extra zeros, jitter 4, bilinear
upsample to 224 with aligned corners), Adam lr 0.05, and the transform draws taken from the
same numpy generator in the same order, so both runs see identical transforms. Lucent runs
the whole network and reads the layer with a hook ("torch (Lucent)"); "torch (truncated)"
stops the forward at the layer, as the companion graph does.

Usage (what docs/featurevis.md reports):
    .venv/bin/python bench/featurevis_bench.py     # resnet18, layer3 channel 3, 64 steps
    .venv/bin/python bench/featurevis_bench.py --model googlenet \
        --layer /inception4a/Concat_output_0 --module inception4a --channel 10
Seeded random weights (torchvision's pretrained ones are not downloadable here): the
objective values are comparable between the two sides, not meaningful pictures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.featurevis import objectives as O
from service.featurevis import param as P
from service.featurevis import transforms as T
from service.featurevis.model import Preprocess, Target
from service.featurevis.optimize import Settings, visualize

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def export(net: torch.nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 224, 224),),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    path.write_bytes(buffer.getvalue())


def ours(path: Path, layer: str, channel: int, steps: int, seed: int, threads: int) -> dict:
    from service.runtime.runner import ModelRunner
    from service.runtime.sessions import SessionCache
    from service.settings import Settings as ServiceSettings

    sessions = SessionCache(
        ServiceSettings(providers=["CPUExecutionProvider"], intra_op_threads=threads)
    )
    runner = ModelRunner(
        path, path.parent / "derived", "bench", "input", "logits", lambda p: sessions.get(p)
    )
    target = Target(runner, Preprocess(1 / 255, MEAN, STD), (224, 224))
    stamps: list[float] = []
    result = visualize(
        target,
        O.Channel(layer, channel),
        Settings(steps=steps, seed=seed),
        progress=lambda step, n, v: stamps.append(time.perf_counter()),
    )
    per_step = [b - a for a, b in itertools.pairwise(stamps)][2:]
    return {
        "s_per_step": statistics.median(per_step),
        "final": result.final,
        "last_steps": float(np.mean(result.curve[-8:])),
        "total_s": result.seconds,
        "image": result.images[0],
    }


class _Stop(Exception):
    pass


def lucent(
    net: torch.nn.Module,
    module: str,
    channel: int,
    steps: int,
    seed: int,
    truncate: bool,
) -> dict:
    """Lucent's render_vis for objective ``module:channel``, written in torch."""
    size = 128
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # the same initial spectrum as ours for the seed
    init = rng.normal(size=(1, 3, size, size // 2 + 1, 2)) * 0.01
    spectrum = torch.tensor(init, dtype=torch.float32, requires_grad=True)
    scale = torch.tensor(P.spectrum_scale(size, size), dtype=torch.float32)[None, None]
    color = torch.tensor(P.COLOR, dtype=torch.float32)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    scales = [1 + (i - 5) / 50 for i in range(11)]
    angles = list(range(-10, 11)) + [0] * 5
    store: dict[str, torch.Tensor] = {}

    def hook(_m: object, _i: object, out: torch.Tensor) -> None:
        store["a"] = out
        if truncate:
            raise _Stop

    handle = net.get_submodule(module).register_forward_hook(hook)

    def image(spec: torch.Tensor) -> torch.Tensor:
        x = torch.fft.irfftn(torch.view_as_complex(spec) * scale, s=(size, size), norm="ortho")
        x = x / P.FFT_DIVISOR
        x = torch.einsum("ij,bjhw->bihw", color, x)
        return torch.sigmoid(x)

    def transform(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, [12] * 4, value=0.5)
        oy, ox = (int(v) for v in rng.integers(0, 8, size=2))
        h, w = x.shape[-2:]
        x = x[..., oy : oy + h - 8, ox : ox + w - 8]
        s = scales[int(rng.integers(len(scales)))]
        h, w = x.shape[-2:]
        nh, nw = int(np.ceil(s * h)), int(np.ceil(s * w))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=True)
        py, px = max(0, int(np.ceil((h - nh) / 2))), max(0, int(np.ceil((w - nw) / 2)))
        x = F.pad(x, [px, px, py, py])
        angle = angles[int(rng.integers(len(angles)))]
        if angle:
            h, w = x.shape[-2:]
            sy, sx = T.rotation_sampling(h, w, float(angle))
            grid = torch.tensor(
                np.stack([sx / (w - 1) * 2 - 1, sy / (h - 1) * 2 - 1], axis=-1)[None],
                dtype=torch.float32,
            )
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        oy, ox = (int(v) for v in rng.integers(0, 4, size=2))
        h, w = x.shape[-2:]
        x = x[..., oy : oy + h - 4, ox : ox + w - 4]
        return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=True)

    def objective(x: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(_Stop):
            net((x - mean) / std)
        return store["a"][:, channel].mean()

    opt = torch.optim.Adam([spectrum], lr=0.05)
    times, curve = [], []
    for _ in range(steps):
        started = time.perf_counter()
        opt.zero_grad()
        value = objective(transform(image(spectrum)))
        (-value).backward()
        opt.step()
        times.append(time.perf_counter() - started)
        curve.append(float(value.detach()))
    with torch.no_grad():
        final_img = image(spectrum)
        final = float(
            objective(
                F.interpolate(final_img, size=(224, 224), mode="bilinear", align_corners=True)
            )
        )
    handle.remove()
    pixels = (final_img[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return {
        "s_per_step": statistics.median(times[2:]),
        "final": final,
        "last_steps": float(np.mean(curve[-8:])),
        "total_s": sum(times),
        "image": pixels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument(
        "--layer", default="/layer3/layer3.1/relu_1/Relu_output_0", help="ONNX tensor."
    )
    parser.add_argument("--module", default="layer3", help="The torch module it is.")
    parser.add_argument("--channel", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores, both sides.")
    parser.add_argument("--out", type=Path, help="Write the images and a JSON summary here.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_threads = torch.get_num_threads()
    net = build(args.model)
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export(net, path)
        rows["cnnvis (onnxruntime)"] = ours(
            path, args.layer, args.channel, args.steps, args.seed, args.threads
        )
    rows["torch (Lucent)"] = lucent(net, args.module, args.channel, args.steps, args.seed, False)
    rows["torch (truncated)"] = lucent(net, args.module, args.channel, args.steps, args.seed, True)
    print(
        f"{args.model} {args.module} channel {args.channel}: {args.steps} steps, 128 px ->"
        f" 224, torch threads {torch_threads}"
    )
    print(f"{'':24} {'s/step':>8} {'total s':>8} {'final obj':>10} {'last-8 obj':>10}")
    for name, r in rows.items():
        print(
            f"{name:24} {r['s_per_step']:8.4f} {r['total_s']:8.2f} {r['final']:10.4f}"
            f" {r['last_steps']:10.4f}"
        )
    if args.out:
        from PIL import Image

        args.out.mkdir(parents=True, exist_ok=True)
        for name, r in rows.items():
            slug = name.split()[0] + ("-truncated" if "truncated" in name else "")
            Image.fromarray(r.pop("image")).save(args.out / f"{slug}.png")
        (args.out / "featurevis_bench.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
