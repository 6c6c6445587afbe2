"""The bridge from the explanation methods to onnxruntime.

A :class:`ModelRunner` serves one stored model version. It runs

* the plain forward, optionally exposing extra tensors (a *forward graph* that lists them as
  outputs, pruned to what they need),
* the companion graph (``models_store.companion``): score, layer activations, their gradients
  for a given ``seed`` at the score, and optionally the input gradient, in one run,
* the *head* of the network from a layer tensor to the score (for ablation), or, where the
  graph cannot be cut at that layer, the whole forward with the layer multiplied by a mask.

Every derived graph is built once and cached on disk under ``derived_dir`` (atomic writes:
temporary file in the same folder, then ``os.replace``); the runner also remembers key ->
(path, spec) in memory so repeated calls never touch the disk. Sessions come from the
``open_session`` callable (the service passes ``SessionCache.get``, which caches them by path).
Thread-safe: concurrent callers asking for the same graph wait for a single build.

Inputs are fed in the model's own layout; service.explain.layout.CanonicalRunner wraps a runner so
the methods see NCHW rows and (R, K, h, w) layers whatever that layout is.

Batch limits: the source model's image input declares its batch dimension; a fixed
``dim_value`` N (e.g. ``torch.onnx.export`` without ``dynamic_axes`` gives 1) means every run
of every graph derived from it (forward, companion, head, masked) is split into chunks of N
rows and the last chunk padded to N, the padded rows dropped (``service/runtime/graphio.py``).
A derived graph's own declaration, read from its session, wins where it has one.

Image sizes: a model whose image input leaves its non-batch dims symbolic (exported with
dynamic height and width) gets its derived graphs built for ``input_dims``, the size the
service feeds (the card's), from a copy with those dims pinned (``derived/model-pinned-*``):
the companion builder needs static sizes for pooling counts, Concat splits and Slice bounds.

Element types: a float16/bfloat16 (or mixed-precision) model is converted once to float32
(``models_store.dtypes.upcast``) and written to ``derived/model-float32-<key>.onnx``; every
derived graph is built from that copy and keyed by ``<sha256>+float32-<UPCAST_VERSION>``, so
it never shares a cache entry with graphs of the model itself. The plain forward still opens
the stored file: the service's session cache opens the float32 copy for the CPU provider and
the model itself on CUDA (``service/runtime/sessions.py``), and feeds are cast to what the
session declares.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper

from models_store.companion import BUILDER_VERSION, CompanionSpec, forward_model, load_or_build
from models_store.dtypes import UPCAST_VERSION, needs_upcast, upcast
from models_store.errors import LayerNotFound
from models_store.files import write_atomic
from service.runtime.batcher import BatchedSession
from service.runtime.cancel import raise_if_cancelled
from service.runtime.graphio import declared, model_batch_limit, run_fitted

__all__ = ["Gradients", "ModelRunner"]

RUNNER_VERSION = "1"  # bump when a derived forward/head/mask graph can change


class SessionLike(Protocol):
    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass
class Gradients:
    score: np.ndarray  # (N, K)
    activations: list[np.ndarray]  # one per layer
    gradients: list[np.ndarray]  # d(sum(seed * score)) / d(layer), one per layer
    input_gradient: np.ndarray | None  # d(sum(seed * score)) / d(image) when asked


@dataclass(frozen=True)
class _Graph:
    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    spec: CompanionSpec | None = None
    tensors: frozenset[str] = frozenset()  # a head's: every tensor it computes


def _key(*parts: object) -> str:
    payload = json.dumps([RUNNER_VERSION, BUILDER_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    if n == 0:
        return []
    step = n if not batch_size or batch_size <= 0 else int(batch_size)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def pin_input_dims(
    model: onnx.ModelProto, image: str, dims: tuple[int, ...] | None
) -> onnx.ModelProto | None:
    """A copy of ``model`` whose image input has ``dims`` where its non-batch dims are
    symbolic; None when there is nothing to pin (or the ranks disagree)."""
    if not dims:
        return None
    for vi in model.graph.input:
        if vi.name != image:
            continue
        shape = vi.type.tensor_type.shape.dim
        if len(shape) != len(dims) + 1 or all(d.HasField("dim_value") for d in shape[1:]):
            return None
        pinned = onnx.ModelProto()
        pinned.CopyFrom(model)
        target = next(v for v in pinned.graph.input if v.name == image)
        for d, size in zip(target.type.tensor_type.shape.dim[1:], dims, strict=True):
            if not d.HasField("dim_value"):
                d.dim_value = size
        return pinned
    return None


class ModelRunner:
    """Runs one model version and its derived graphs (see the module docstring)."""

    def __init__(
        self,
        model_path: Path,
        derived_dir: Path,
        sha256: str,
        image_input: str,
        score_output: str,
        open_session: Callable[[Path], SessionLike],
        input_dims: Sequence[int] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        # The image's non-batch dims as the service feeds them (the card's size, in the
        # model's layout): derived graphs of a model whose input leaves them symbolic are
        # built for that size, so the builder sees every size it needs.
        self.input_dims = tuple(int(d) for d in input_dims) if input_dims else None
        self.derived_dir = Path(derived_dir)
        self.sha256 = sha256
        self.image_input = image_input
        self.score_output = score_output
        self._open = open_session
        self._graphs: dict[str, _Graph] = {}
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._model: onnx.ModelProto | None = None
        self._float32: tuple[onnx.ModelProto, Path, str] | None = None
        self._upcasting = threading.Lock()  # one float32 conversion, however many callers

    # -- sessions and graphs ---------------------------------------------------------------

    @property
    def provider(self) -> str:
        session = self._open(self.model_path)
        if hasattr(session, "provider"):
            return str(session.provider)
        return str(session.get_providers()[0])  # type: ignore[attr-defined]

    @property
    def model(self) -> onnx.ModelProto:
        """The float32 model the derived graphs come from: the source model, or its float32
        copy when the source holds float16/bfloat16 tensors (loaded once; do not mutate)."""
        return self._graph_model()[0]

    @property
    def is_upcast(self) -> bool:
        """Whether the source model is run through its float32 copy."""
        return self._graph_model()[1] != self.model_path

    @property
    def batch_limit(self) -> int | None:
        """The fixed batch size the image input declares, or None when it is dynamic."""
        return model_batch_limit(self._source(), self.image_input)

    def num_classes(self, x: np.ndarray | None = None) -> int:
        """Width of the score output: from the graph when static, else from one forward."""
        for vi in self._source().graph.output:
            if vi.name == self.score_output:
                dims = vi.type.tensor_type.shape.dim
                if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0:
                    return int(dims[-1].dim_value)
        if x is None:
            raise ValueError("the score width is dynamic; pass an input to measure it")
        return int(self.forward(np.asarray(x)[:1])[0].shape[-1])

    def _source(self) -> onnx.ModelProto:
        with self._lock:
            if self._model is None:
                self._model = onnx.load(str(self.model_path))
            return self._model

    def _graph_model(self) -> tuple[onnx.ModelProto, Path, str]:
        """(model, its path, the sha that keys graphs derived from it): the source, or its
        copy written once to derived_dir — upcast to float32, and with symbolic image dims
        pinned to ``input_dims``."""
        with self._lock:
            if self._float32 is not None:
                return self._float32
        with self._upcasting:
            if self._float32 is None:
                source = self._source()
                pinned = pin_input_dims(source, self.image_input, self.input_dims)
                if not needs_upcast(source) and pinned is None:
                    found = (source, self.model_path, self.sha256)
                else:
                    model, sha = source, self.sha256
                    if pinned is not None:
                        model = pinned
                        sha = f"{sha}+dims-{'x'.join(map(str, self.input_dims or ()))}"
                    kind = "model-pinned"
                    if needs_upcast(model):
                        model, kind = upcast(model), "model-float32"
                        sha = f"{sha}+float32-{UPCAST_VERSION}"
                    path = self._derived(kind, _key(kind, sha), lambda: model)
                    found = (model, path, sha)
                with self._lock:
                    self._float32 = found
            return self._float32

    def _cached(self, key: str, build: Callable[[], _Graph]) -> _Graph:
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                return graph
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key; the others wait and read the result
            with self._lock:
                graph = self._graphs.get(key)
            if graph is None:
                graph = build()
                with self._lock:
                    self._graphs[key] = graph
        with self._lock:
            self._building.pop(key, None)
        return graph

    def _derived(self, kind: str, key: str, make: Callable[[], onnx.ModelProto]) -> Path:
        """Path of ``<kind>-<key>.onnx`` in derived_dir, building and writing it on a miss."""
        path = self.derived_dir / f"{kind}-{key}.onnx"
        if not path.exists():
            self.derived_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(path, make().SerializeToString())
        return path

    def _forward_graph(self, extra: tuple[str, ...]) -> _Graph:
        outputs = (self.score_output, *extra)
        if not extra:
            return _Graph(self.model_path, (self.image_input,), outputs)
        model, _, sha = self._graph_model()
        key = _key("forward", sha, outputs)

        def build() -> _Graph:
            path = self._derived("forward", key, lambda: forward_model(model, outputs))
            return _Graph(path, (self.image_input,), outputs)

        return self._cached(key, build)

    def _companion(self, layers: tuple[str, ...], rule: str, input_gradient: bool) -> _Graph:
        _, model_path, sha = self._graph_model()
        return self._companion_of(model_path, sha, layers, rule, input_gradient)

    def _companion_of(
        self,
        source: Path,
        sha: str,
        layers: tuple[str, ...],
        rule: str,
        input_gradient: bool,
        score: str | None = None,
    ) -> _Graph:
        """The companion graph of the graph at ``source`` (identified by ``sha``), its score
        the model's score output unless ``score`` names another tensor."""
        score = score or self.score_output
        key = _key("companion", sha, layers, rule, input_gradient, score)

        def build() -> _Graph:
            path, spec = load_or_build(
                self.derived_dir,
                source,
                sha,
                layers,
                rule,  # type: ignore[arg-type]
                input_gradient,
                score,
            )
            return _Graph(path, (spec.image_input, spec.seed), spec.outputs, spec)

        return self._cached(key, build)

    def prepare(
        self, layers: Sequence[str] = (), rule: str = "standard", input_gradient: bool = False
    ) -> Path:
        """Build (or find) the companion graph the runner will use for these layers and rule,
        from the float32 copy where there is one; its path. For ahead-of-time builds."""
        return self._companion(tuple(layers), rule, input_gradient).path

    def _run(
        self, graph: _Graph, feeds: Sequence[np.ndarray], batch_size: int | None
    ) -> list[np.ndarray]:
        session = self._open(graph.path)
        n = feeds[0].shape[0]
        model_limit = self.batch_limit
        limit = declared(session).batch or model_limit
        if limit is not None:  # a fixed batch: every run has exactly `limit` rows
            batch_size = limit
        parts: list[list[np.ndarray]] = []
        for chunk in _chunks(n, batch_size):
            raise_if_cancelled()  # an abandoned request stops here, between runs
            named = {
                name: np.ascontiguousarray(f[chunk])
                for name, f in zip(graph.inputs, feeds, strict=True)
            }
            if isinstance(session, BatchedSession):
                parts.append(list(session.run(list(graph.outputs), named, batch=model_limit)))
            else:
                parts.append(run_fitted(session, list(graph.outputs), named, model_limit))
        if not parts:
            raise ValueError("nothing to run: the batch is empty")
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(p, axis=0) for p in zip(*parts, strict=False)]

    # -- public runs -------------------------------------------------------------------------

    def forward(
        self, x: np.ndarray, extra: Sequence[str] = (), batch_size: int | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (N, K) and the ``extra`` tensors, running ``x`` in chunks of ``batch_size``."""
        graph = self._forward_graph(tuple(extra))
        outs = self._run(graph, [np.asarray(x, dtype=np.float32)], batch_size)
        return outs[0], outs[1:]

    def gradients(
        self,
        x: np.ndarray,
        seed: np.ndarray,
        layers: Sequence[str] = (),
        *,
        rule: str = "standard",
        input_gradient: bool = False,
        batch_size: int | None = None,
    ) -> Gradients:
        """Score, activations and d(sum(seed * score))/d(layer) (and /d(image)) in one run."""
        layers = tuple(layers)
        graph = self._companion(layers, rule, input_gradient)
        x = np.asarray(x, dtype=np.float32)
        seed = np.asarray(seed, dtype=np.float32)
        if seed.shape[0] != x.shape[0]:
            raise ValueError(f"seed has {seed.shape[0]} rows, x has {x.shape[0]}")
        outs = self._run(graph, [x, seed], batch_size)
        n = len(layers)
        return Gradients(
            score=outs[0],
            activations=outs[1 : 1 + 2 * n : 2],
            gradients=outs[2 : 2 + 2 * n : 2],
            input_gradient=outs[1 + 2 * n] if input_gradient else None,
        )

    def objective_gradient(
        self,
        x: np.ndarray,
        tensor: str,
        seed: np.ndarray,
        *,
        rule: str = "standard",
        batch_size: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The value of any ``tensor`` of the graph at ``x`` and d(sum(seed * tensor))/d(image)
        in one run: the companion graph whose score is ``tensor`` (built once per (tensor,
        rule), cached on disk like every other). Feature visualisation's step."""
        _, model_path, sha = self._graph_model()
        graph = self._companion_of(model_path, sha, (), rule, True, tensor)
        x = np.asarray(x, dtype=np.float32)
        seed = np.asarray(seed, dtype=np.float32)
        if seed.shape[0] != x.shape[0]:
            raise ValueError(f"seed has {seed.shape[0]} rows, x has {x.shape[0]}")
        outs = self._run(graph, [x, seed], batch_size)
        return outs[0], outs[1]

    # -- the head from a layer, and the masked forward ---------------------------------------

    def _head(self, layer: str) -> _Graph | None:
        """The graph layer -> score, or None when the score also depends on the image by a
        path that avoids ``layer`` (skip connections around it, shape reads of the input)."""
        model, _, _ = self._graph_model()
        key = self._head_key(layer)

        def build() -> _Graph:
            head = _head_model(model, self.image_input, layer, self.score_output)
            if head is None:
                return _Graph(Path(), (), ())
            path = self._derived("head", key, lambda: head)
            computed = frozenset(o for node in head.graph.node for o in node.output)
            return _Graph(path, (layer,), (self.score_output,), tensors=computed)

        graph = self._cached(key, build)
        return graph if graph.inputs else None

    def _head_key(self, layer: str) -> str:
        """The identity of the head graph at ``layer`` (its file name, and its companion's)."""
        return _key("head", self._graph_model()[2], layer, self.score_output)

    def _masked(self, layer: str) -> _Graph:
        model, _, sha = self._graph_model()
        key = _key("masked", sha, layer, self.score_output)
        mask = f"{layer}/cnnvis_mask"

        def build() -> _Graph:
            path = self._derived(
                "masked",
                key,
                lambda: _masked_model(model, layer, mask, self.score_output),
            )
            return _Graph(path, (self.image_input, mask), (self.score_output,))

        return self._cached(key, build)

    def _head_companion(self, cut: str, layers: tuple[str, ...], rule: str) -> _Graph:
        """The companion graph of the head at ``cut``: gradients at ``layers`` (inside the
        head) and at its input, the cut itself."""
        head = self._head(cut)
        assert head is not None
        return self._companion_of(head.path, self._head_key(cut), layers, rule, True)

    def can_split(self, layer: str) -> bool:
        return self._head(layer) is not None

    def split_point(self, layers: Sequence[str]) -> str | None:
        """A layer of ``layers`` where the graph can be cut with all the others inside the
        head (layer -> score), so one trunk run serves any number of seeds; or None."""
        for layer in layers:
            head = self._head(layer)
            if head is not None and all(o == layer or o in head.tensors for o in layers):
                return layer
        return None

    def head_gradients(
        self,
        cut: str,
        activation: np.ndarray,
        seed: np.ndarray,
        layers: Sequence[str],
        *,
        rule: str = "standard",
        batch_size: int | None = None,
    ) -> Gradients:
        """What :meth:`gradients` gives for ``layers`` (``cut`` among them, the others in its
        head; see :meth:`split_point`), from the rows' ``cut`` activations: only the head
        runs, forward and backward, once per seed row."""
        others = tuple(layer for layer in layers if layer != cut)
        graph = self._head_companion(cut, others, rule)
        activation = np.asarray(activation, dtype=np.float32)
        seed = np.asarray(seed, dtype=np.float32)
        if seed.shape[0] != activation.shape[0]:
            raise ValueError(f"seed has {seed.shape[0]} rows, activation {activation.shape[0]}")
        outs = self._run(graph, [activation, seed], batch_size)
        found = {layer: (outs[1 + 2 * i], outs[2 + 2 * i]) for i, layer in enumerate(others)}
        found[cut] = (activation, outs[1 + 2 * len(others)])
        return Gradients(
            score=outs[0],
            activations=[found[layer][0] for layer in layers],
            gradients=[found[layer][1] for layer in layers],
            input_gradient=None,
        )

    def forward_from(
        self, layer: str, activation: np.ndarray, batch_size: int | None = None
    ) -> np.ndarray:
        """Scores from a (possibly edited) activation of ``layer``; needs :meth:`can_split`."""
        graph = self._head(layer)
        if graph is None:
            raise ValueError(f"the graph cannot be cut at {layer!r}")
        return self._run(graph, [np.asarray(activation, dtype=np.float32)], batch_size)[0]

    def forward_masked(
        self, x: np.ndarray, layer: str, mask: np.ndarray, batch_size: int | None = None
    ) -> np.ndarray:
        """Scores of the full forward with ``layer`` multiplied by ``mask`` (broadcast against
        the activation, e.g. (N, K, 1, 1) to switch channels off)."""
        graph = self._masked(layer)
        feeds = [np.asarray(x, dtype=np.float32), np.asarray(mask, dtype=np.float32)]
        return self._run(graph, feeds, batch_size)[0]


def _tensor_type(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        if vi.name == name:
            return vi
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.name == name:
            return vi
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _has_tensor(model: onnx.ModelProto, name: str) -> bool:
    return any(name in n.output for n in model.graph.node) or any(
        i.name == name for i in model.graph.input
    )


def _head_model(
    model: onnx.ModelProto, image: str, layer: str, score: str
) -> onnx.ModelProto | None:
    if not _has_tensor(model, layer):
        raise LayerNotFound(f"layer {layer!r} is not a tensor of the graph")
    nodes = list(model.graph.node)
    # Tensors that depend on the image without passing through the layer.
    around = {image}
    for node in nodes:
        if node.output and layer in node.output:
            continue
        if any(i in around for i in node.input):
            around.update(o for o in node.output if o)
    needed = {score}
    kept = []
    for node in reversed(nodes):
        if layer in node.output or not any(o in needed for o in node.output):
            continue
        if any(i in around for i in node.input if i):
            return None
        if any(a.g.node or a.graphs for a in node.attribute):
            return None  # control flow reads outer tensors we do not track
        kept.append(node)
        needed.update(i for i in node.input if i)
    kept.reverse()
    layer_vi = _tensor_type(model, layer)
    graph = helper.make_graph(
        kept,
        f"{model.graph.name}_head",
        [layer_vi],
        [_tensor_type(model, score)],
        initializer=[t for t in model.graph.initializer if t.name in needed],
    )
    head = helper.make_model(graph, opset_imports=list(model.opset_import))
    head.ir_version = model.ir_version
    return head


def _masked_model(model: onnx.ModelProto, layer: str, mask: str, score: str) -> onnx.ModelProto:
    if not _has_tensor(model, layer):
        raise LayerNotFound(f"layer {layer!r} is not a tensor of the graph")
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    renamed = f"{layer}/cnnvis_masked"
    for node in masked.graph.node:
        for i, name in enumerate(node.input):
            if name == layer:
                node.input[i] = renamed
    nodes = list(masked.graph.node)
    at = next((k for k, n in enumerate(nodes) if layer in n.output), -1) + 1
    nodes.insert(at, helper.make_node("Mul", [layer, mask], [renamed], name=f"{layer}/mask"))
    del masked.graph.node[:]
    masked.graph.node.extend(nodes)
    masked.graph.input.append(helper.make_tensor_value_info(mask, onnx.TensorProto.FLOAT, None))
    keep = [o for o in masked.graph.output if o.name == score]
    del masked.graph.output[:]
    masked.graph.output.extend(keep)
    return masked
