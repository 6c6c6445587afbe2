"""The ``cnnvis`` command: serve, manage the model store, install zoo models."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from models_store.companion.context import RELU_RULES
from models_store.errors import ProblemError
from models_store.store import ModelStore, parse_ref
from schemas.card import ModelCard
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnvis", description=__doc__)
    parser.add_argument("--store", type=Path, help="Model store folder (env CNNVIS_STORE).")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the HTTP service.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--store", type=Path, dest="serve_store", help="Model store folder.")

    models = sub.add_parser("models", help="Manage the model store.").add_subparsers(
        dest="action", required=True
    )
    add = models.add_parser("add", help="Register an ONNX model with its card.")
    add.add_argument("model", type=Path)
    add.add_argument("--card", type=Path, required=True)
    models.add_parser("list", help="List models and versions.")
    rm = models.add_parser("rm", help="Delete NAME or NAME@VERSION.")
    rm.add_argument("ref")
    build = models.add_parser(
        "build", help="Derive companion graphs ahead of time (default: the default layer)."
    )
    build.add_argument("refs", nargs="*", metavar="NAME[@VERSION]")
    build.add_argument("--all", action="store_true", help="Every model in the store.")
    build.add_argument("--layer", action="append", help="Layer tensor (repeatable).")
    build.add_argument("--rule", choices=list(RELU_RULES), default="standard")
    build.add_argument("--input-gradient", action="store_true", help="Also d score / d image.")

    zoo = sub.add_parser("zoo", help="Pretrained models (needs the zoo extra).").add_subparsers(
        dest="action", required=True
    )
    zoo_add = zoo.add_parser("add", help="Export and register a zoo model if missing.")
    zoo_add.add_argument("name")
    zoo.add_parser("list", help="Available zoo models.")

    fv = sub.add_parser(
        "featurevis",
        help="Optimise an image for an objective (feature visualisation); writes PNGs.",
        description="Feature visualisation by optimisation, run here (no server): the same"
        " objectives, defaults and limits as POST /v1/models/{name}/featurevis.",
    )
    fv.add_argument("model", metavar="NAME[@VERSION]")
    fv.add_argument(
        "--type",
        choices=["channel", "neuron", "layer", "class", "direction", "diversity"],
        default="channel",
    )
    fv.add_argument("--layer", default="auto", help='Layer tensor (default "auto").')
    fv.add_argument("--channel", type=int, default=0)
    fv.add_argument("--x", type=int)
    fv.add_argument("--y", type=int)
    fv.add_argument("--class", dest="class_", help="Class index or label (--type class).")
    fv.add_argument(
        "--objective", help="The objective as JSON (as the HTTP body's), instead of --type."
    )
    fv.add_argument("--steps", type=int, default=512)
    fv.add_argument("--size", type=int, default=128)
    fv.add_argument("--lr", type=float, default=0.05)
    fv.add_argument("--batch", type=int, default=1)
    fv.add_argument("--seed", type=int)
    fv.add_argument("--param", choices=["fourier", "pixels"], default="fourier")
    fv.add_argument("--no-decorrelate", action="store_true")
    fv.add_argument("--no-transforms", action="store_true")
    fv.add_argument("--rule", choices=list(RELU_RULES), default="standard")
    fv.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("featurevis.png"),
        help="PNG path; a batch writes NAME-0.png, NAME-1.png, ...",
    )
    fv.add_argument("--predict", action="store_true", help="Print the result's top-5 classes.")
    fv.add_argument("--quiet", "-q", action="store_true", help="No progress bar.")

    batch = sub.add_parser(
        "batch", help="Whole datasets: explain a folder or manifest into Parquet (docs/batch.md)."
    ).add_subparsers(dest="action", required=True)
    bx = batch.add_parser("explain", help="Explain every image; resumable Parquet shards.")
    bx.add_argument("--model", required=True, metavar="NAME[@VERSION]")
    bx.add_argument("--method", default="gradcam")
    bx.add_argument("--input", required=True, type=Path, help="Folder tree, or CSV/Parquet.")
    bx.add_argument("--output", required=True, type=Path)
    bx.add_argument("--request", help="Further explain fields as JSON (layer, render, ...).")
    bx.add_argument("--engine", choices=["ray", "local"], default="ray")
    bx.add_argument("--actors", type=int, default=1, help="Ray actors (one core each).")
    bx.add_argument("--shard-size", type=int, default=8)
    bx.add_argument("--no-map", action="store_true", help="Leave the raw map column empty.")
    bx.add_argument("--quiet", "-q", action="store_true", help="No progress bar.")

    args = parser.parse_args(argv)
    settings = Settings()
    store_path = getattr(args, "serve_store", None) or args.store or settings.store
    settings = settings.model_copy(update={"store": store_path})
    try:
        return _run(args, settings)
    except ProblemError as exc:
        print(f"cnnvis: {exc.title.lower()}: {exc.detail}", file=sys.stderr)
        return 2


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM outside uvicorn's own handler: before it starts, or re-raised by it after the
    graceful drain. A drained shutdown is a success, so exit 0 rather than die by the signal."""
    raise SystemExit(0)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        import uvicorn

        from service.app import create_app
        from service.logs import log_config

        signal.signal(signal.SIGTERM, _exit_cleanly)
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level, settings.log_format),
            access_log=False,  # the app writes access lines with the request id
            # typed int by uvicorn, used as an asyncio timeout: a float is what it needs
            timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        )
        return 0
    if args.command == "featurevis":
        return _featurevis(args, settings)
    if args.command == "batch":
        return _batch(args, settings)
    store = ModelStore(settings.store)
    if args.command == "models":
        if args.action == "add":
            card = ModelCard.model_validate(json.loads(args.card.read_text()))
            record = store.add(args.model.read_bytes(), card)
            print(f"registered {record.ref} (sha256 {record.sha256[:12]})")
        elif args.action == "list":
            for name in store.names():
                print(f"{name}\t{', '.join(store.versions(name))}")
        elif args.action == "build":
            return _build(store, args)
        elif args.action == "rm":
            name, version = parse_ref(args.ref)
            for v in store.remove(name, version):
                print(f"removed {name}@{v}")
        return 0
    if args.command == "zoo":
        from service import zoo

        if args.action == "list":
            print("\n".join(sorted(zoo.ZOO)))
            return 0
        if args.name not in zoo.ZOO:
            print(
                f"cnnvis: unknown zoo model {args.name!r}; try: {', '.join(zoo.ZOO)}",
                file=sys.stderr,
            )
            return 2
        already = args.name in store.names()
        if not already:
            print(f"{args.name}: exporting to ONNX with torch (once), then checking it ...")
        record = zoo.install(store, args.name)
        print(f"{'present' if already else 'installed'}: {record.ref} in {store.root}")
        return 0
    return 1


def _build(store: ModelStore, args: argparse.Namespace) -> int:
    import time

    from models_store.graph import graph_inputs, graph_outputs
    from models_store.inspect import summarize
    from service.runtime.runner import ModelRunner
    from service.state import fed_dims

    refs = store.names() if args.all else args.refs
    if not refs:
        if args.all:  # an empty store is not an error (a pod's init container on a new volume)
            print(f"nothing to build: {store.root} holds no models")
            return 0
        print("cnnvis: name models to build, or pass --all", file=sys.stderr)
        return 2
    for ref in refs:
        record = store.resolve(ref)
        layers = args.layer
        image = record.card.input.name or graph_inputs(record.model)[0].name
        score = record.card.output.name or graph_outputs(record.model)[0].name
        if not layers:
            default = (
                record.card.default_layer or summarize(record.model, image, score).default_layer
            )
            layers = [default] if default else []
        started = time.perf_counter()
        # Through the runner: the graph it will serve (built from the float32 copy of a
        # float16 model, or for the card's size where the model's is dynamic).
        runner = ModelRunner(
            record.model_path,
            record.derived_dir,
            record.sha256,
            image,
            score,
            open_session=lambda path: None,  # type: ignore[arg-type,return-value]
            input_dims=fed_dims(record, image),
        )
        path = runner.prepare(layers, args.rule, args.input_gradient)
        took = time.perf_counter() - started
        print(
            f"{record.ref}: {', '.join(layers) or '(input only)'} [{args.rule}]"
            f" -> {path.name} ({took:.1f} s)"
        )
    return 0


class ProgressBar:
    """``[#####.....]  step/steps  objective  elapsed, ~remaining`` redrawn on stderr."""

    def __init__(self, quiet: bool = False, width: int = 30) -> None:
        import time

        self.quiet, self.width, self.started = quiet, width, time.perf_counter()
        self.last = 0.0

    def __call__(self, step: int, steps: int, value: float) -> None:
        import time

        now = time.perf_counter()
        if self.quiet or (now - self.last < 0.1 and step < steps):
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / step * (steps - step) if step else 0.0
        filled = int(self.width * step / max(steps, 1))
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(
            f"\r[{bar}] {step}/{steps}  objective {value:.4g}  {elapsed:.1f} s, ~{left:.0f} s left "
        )
        if step >= steps:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _featurevis(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from schemas.featurevis import FeatureVisRequest
    from service.featurevis.jobs import featurevis_work, make_target
    from service.featurevis.transforms import resize
    from service.imaging.render import encode_png
    from service.state import AppState

    if args.objective:
        objective = json.loads(args.objective)
    else:
        objective = {"type": args.type}
        if args.type == "class":
            objective["class"] = args.class_
        else:
            objective["layer"] = args.layer
        if args.type in ("channel", "neuron"):
            objective["channel"] = args.channel
        if args.type == "neuron":
            objective.update({k: v for k, v in (("x", args.x), ("y", args.y)) if v is not None})
    body = FeatureVisRequest.model_validate(
        {
            "objective": objective,
            "steps": args.steps,
            "size": args.size,
            "lr": args.lr,
            "batch": args.batch,
            "seed": args.seed,
            "param": {"kind": args.param, "decorrelate": not args.no_decorrelate},
            "transforms": {"enabled": not args.no_transforms},
            "rule": args.rule,
        }
    )
    settings = settings.model_copy(update={"monitoring": False, "sampling": False})
    state = AppState.open(settings)
    try:
        record = state.store.resolve(args.model)
        work = featurevis_work(state, record, body)
        result = work(ProgressBar(args.quiet), lambda: False)
        paths = [args.out]
        if len(result.images) > 1:
            paths = [args.out.with_name(f"{args.out.stem}-{k}{args.out.suffix}") for k in
                     range(len(result.images))]  # fmt: skip
        for path, image in zip(paths, result.images, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_png(image))
        print(
            f"{record.ref}: {len(result.curve)} steps in {result.seconds:.1f} s"
            f" ({result.seconds / max(1, len(result.curve)) * 1000:.0f} ms/step); objective"
            f" {result.initial:.4g} -> {result.final:.4g}; wrote {', '.join(map(str, paths))}"
        )
        if args.predict:
            target = make_target(state, record, body.rule)
            pixels = result.images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
            scores = target.scores(resize(pixels, target.size)[0])
            labels = record.card.labels or []
            for k, row in enumerate(scores):
                top = np.argsort(-row)[:5]
                names = [f"{labels[i] if i < len(labels) else i} ({row[i]:.2f})" for i in top]
                print(f"image {k} top-5: {', '.join(names)}")
    finally:
        state.admission.close()
        state.monitor.close()
    return 0


def _batch(args: argparse.Namespace, settings: Settings) -> int:
    from service.batch.run import run_job
    from service.batch.work import Job

    request = {**json.loads(args.request or "{}"), "method": args.method}
    job = Job(args.model, request, settings.store, with_map=not args.no_map)
    figures = run_job(
        job,
        args.input,
        args.output,
        engine=args.engine,
        shard_size=args.shard_size,
        actors=args.actors,
        progress=not args.quiet,
    )
    print(
        f"{args.model}: {figures['images']:.0f} images in {figures['seconds']:.1f} s"
        f" ({figures['images_per_s']:.2f} images/s) -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
