"""Companion-graph speed, side by side in one run (issue 3).

For each model (torchvision, seeded random weights, TorchScript export at opset 17) and batch:
  forward        plain onnxruntime forward of the original model
  layer-grad     our companion graph: score + default layer's activation and gradient
  input-grad     our companion graph: the same plus the gradient at the image (default
                 BuildOptions: flipped Conv at unit stride, ConvTranspose when strided)
  input-grad/transpose  the same with every conv gradient as ConvTranspose
  input-grad/flipped    the same with every conv gradient as a zero-stuffed flipped Conv
  torch          torch eager forward + torch.autograd.grad to the input
  onnx-ad        onnx-ad's reverse model (input adjoint) on onnxruntime

Usage (what docs/BENCHMARKS.md reports):
    OMP_NUM_THREADS=2 .venv/bin/python bench/companion_bench.py --threads 2
Median of --repeat timed rounds after --warmup runs; every round times each contender once
(round-robin, so load from other processes spreads evenly). Ratios are against `forward`.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models_store.companion import BuildOptions, build_companion

MODELS = ["resnet50", "mobilenet_v3_large", "efficientnet_b0"]
# Alternative formulations of the convolution input gradient (see BuildOptions); the
# default build is measured as "input-grad".
VARIANTS = {
    "transpose": BuildOptions(dense="conv_transpose", grouped="conv_transpose"),
    "flipped": BuildOptions(dense="flipped_conv", grouped="flipped_conv"),
}


def export(name: str, folder: Path) -> tuple[torch.nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    return module, onnx.load(str(path))


def default_layer(model: onnx.ModelProto) -> str:
    """The last spatial tensor: the input of the global pooling in front of the classifier."""
    pools = [n for n in model.graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
    return pools[-1].input[0]


def session(model: onnx.ModelProto, threads: int, profile: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime workers otherwise spin on the cores torch is timed on next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def timed_together(
    fns: dict[str, Callable[[], object]], warmup: int, repeat: int
) -> dict[str, float]:
    """Median ms per callable, timed round-robin so that load from other processes on a
    shared machine spreads evenly over the contenders instead of hitting one of them."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1000 for name, s in samples.items()}


def fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """onnx-ad needs fully static shapes: pin the batch and re-infer."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in [*fixed.graph.input, *fixed.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fixed)


def onnx_ad_session(model: onnx.ModelProto, batch: int, threads: int):
    import onnx_ad

    reverse = onnx_ad.reverse(fixed_batch(model, batch), layout="onnx")
    sess = session(reverse, threads)
    inputs = sess.get_inputs()
    return sess, inputs[0].name, inputs[1].name


def top_ops(profile_path: str, n: int = 6) -> list[tuple[str, float]]:
    events = json.loads(Path(profile_path).read_text())
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"] / 1000
    grand = sum(totals.values()) or 1.0
    return [(op, 100 * ms / grand) for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:n]]


def measure_batch(name, module, model, sessions, batch, args) -> dict[str, object]:
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)
    seed = np.zeros((batch, 1000), np.float32)
    seed[np.arange(batch), rng.integers(0, 1000, batch)] = 1
    feeds = {"input": x, "seed": seed}
    xt, st = torch.from_numpy(x), torch.from_numpy(seed)

    def eager() -> None:
        xg = xt.clone().requires_grad_()
        torch.autograd.grad((module(xg) * st).sum(), xg)

    def runner(sess, inputs):
        return lambda: sess.run(None, inputs)

    contenders: dict[str, Callable[[], object]] = {
        "forward": runner(sessions["forward"], {"input": x}),
        **{label: runner(sess, feeds) for label, sess in sessions.items() if label != "forward"},
        "torch": eager,
    }
    if not args.no_onnx_ad:
        try:
            ad, ad_x, ad_seed = onnx_ad_session(model, batch, args.threads)
            contenders["onnx-ad"] = runner(ad, {ad_x: x, ad_seed: seed[..., None]})
        except Exception as exc:  # reported, not fatal
            print(f"onnx-ad failed on {name}: {exc}", file=sys.stderr)
    row: dict[str, object] = {"model": name, "batch": batch}
    row.update(timed_together(contenders, args.warmup, args.repeat))
    return row


def bench_model(name: str, args, folder: Path):
    module, model = export(name, folder)
    layer = default_layer(model)
    start = time.perf_counter()
    layer_graph, _ = build_companion(model, [layer])
    build = {"layer": (time.perf_counter() - start) * 1000}
    start = time.perf_counter()
    input_graph, _ = build_companion(model, [layer], input_gradient=True)
    build["input"] = (time.perf_counter() - start) * 1000
    sessions = {
        "forward": session(model, args.threads),
        "layer-grad": session(layer_graph, args.threads),
        "input-grad": session(input_graph, args.threads),
    }
    for label, options in VARIANTS.items():
        graph, _ = build_companion(model, [layer], input_gradient=True, options=options)
        sessions[f"input-grad/{label}"] = session(graph, args.threads)
    rows = []
    for batch in args.batches:
        row = measure_batch(name, module, model, sessions, batch, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    # What dominates the input-gradient graph, at the last batch size.
    batch = args.batches[-1]
    x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    seed = np.eye(batch, 1000, dtype=np.float32)
    prof = session(input_graph, args.threads, profile=str(folder / f"{name}-prof"))
    for _ in range(3):
        prof.run(None, {"input": x, "seed": seed})
    return rows, build, top_ops(prof.end_profiling())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-onnx-ad", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # torch's best case: random-init nets produce denormals
    folder = Path(tempfile.mkdtemp(prefix="companion-bench-"))
    rows, builds, profiles = [], {}, {}
    for name in args.models:
        model_rows, builds[name], profiles[name] = bench_model(name, args, folder)
        rows += model_rows
    report(rows, builds, profiles, args)


def report(rows, builds, profiles, args) -> None:
    cols = ["forward", "layer-grad", "input-grad"]
    cols += sorted({c for r in rows for c in r if c.startswith("input-grad/")})
    cols += [c for c in ("torch", "onnx-ad") if any(c in r for r in rows)]
    print()
    print(
        f"threads={args.threads} warmup={args.warmup} repeat={args.repeat} "
        f"ort={ort.__version__} torch={torch.__version__}"
    )
    print("| model | batch | " + " | ".join(f"{c} ms (x fwd)" for c in cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for r in rows:
        cells = []
        for c in cols:
            ms = r.get(c, float("nan"))
            cells.append(f"{ms:.1f}" if c == "forward" else f"{ms:.1f} ({ms / r['forward']:.2f})")
        print(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
    print()
    print("| model | build layer-grad ms | build input-grad ms |")
    print("|---|---|---|")
    for name, b in builds.items():
        print(f"| {name} | {b['layer']:.0f} | {b['input']:.0f} |")
    print()
    print("Share of kernel time in the input-gradient graph (last batch size):")
    for name, ops in profiles.items():
        print(f"- {name}: " + ", ".join(f"{op} {pct:.0f}%" for op, pct in ops))


if __name__ == "__main__":
    main()
