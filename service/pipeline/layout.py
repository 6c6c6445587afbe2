"""How a stored model's image input is fed, and the NCHW runner the explain methods use.

* Layout: the card's ``input.layout`` when it names one (an override), else detected from the
  graph (``models_store.inspect.detect_input_layout``), else NCHW. Images are preprocessed to
  canonical NCHW rows for the methods; :class:`service.explain.layout.CanonicalRunner` feeds
  the model its own layout and hands layer tensors back channel-first.
* Dtype: float inputs get ``(pixel * scale - mean) / std``. A uint8 input (preprocessing
  inside the graph) gets the pixels 0..255 as they are: scale 1, mean 0, std 1 whatever the
  card holds (registration refuses cards that ask for another scaling of a uint8 input).
  Predict feeds uint8; the gradient and perturbation methods need a float input, so they run
  a variant of the graph whose input is float32 carrying the same 0..255 values (possible
  when every consumer of the input is a Cast, which is how exporters write it), stored under
  the version's ``derived/`` folder.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnx

from models_store.errors import UnsupportedModel
from models_store.files import write_atomic
from models_store.graph import TensorInfo, graph_inputs, graph_outputs
from models_store.inspect import NCHW, tensor_layouts
from models_store.store import ModelRecord
from models_store.validate import input_layout
from schemas.card import InputSpec
from service.explain.layout import CanonicalRunner
from service.runtime.runner import ModelRunner
from service.state import AppState, fed_dims

__all__ = ["InputPlan", "canonical_runner", "input_plan", "layer_layouts", "to_input_dtype"]

FLOAT_INPUT_VERSION = "1"  # bump when the float-input variant of a uint8 graph changes


@dataclass(frozen=True)
class InputPlan:
    image: str  # graph input name
    dtype: str  # what the graph declares: float32, float16 or uint8
    layout: str  # NCHW or NHWC, resolved
    spec: InputSpec  # the card's input with the layout resolved (and uint8's identity scaling)

    @property
    def nchw(self) -> InputSpec:
        """The spec the explain methods preprocess with: canonical NCHW rows."""
        return self.spec.model_copy(update={"layout": NCHW})


_lock = threading.Lock()
# keyed by _key(record): a version deleted and posted again is a new entry
_plans: dict[tuple[str, str, float], InputPlan] = {}
_layouts: dict[tuple[str, str, float], dict[str, str]] = {}
_float_runners: dict[tuple[str, str, float], ModelRunner] = {}


def _key(record: ModelRecord) -> tuple[str, str, float]:
    return (str(record.path), record.sha256, record.created)


def _image(record: ModelRecord) -> TensorInfo:
    inputs = graph_inputs(record.model)
    name = record.card.input.name or inputs[0].name
    return next(i for i in inputs if i.name == name)


def input_plan(record: ModelRecord) -> InputPlan:
    """The resolved layout, dtype and preprocessing of ``record``'s image input (cached)."""
    key = _key(record)
    with _lock:
        plan = _plans.get(key)
    if plan is not None:
        return plan
    image = _image(record)
    layout = input_layout(record.model, record.card, image.name)
    update: dict[str, object] = {"layout": layout}
    if image.dtype == "uint8":
        update.update(scale=1.0, mean=[0.0], std=[1.0])
    plan = InputPlan(image.name, image.dtype, layout, record.card.input.model_copy(update=update))
    with _lock:
        _plans[key] = plan
    return plan


def to_input_dtype(x: np.ndarray, plan: InputPlan) -> np.ndarray:
    """The preprocessed float32 batch in the dtype the graph input declares."""
    if plan.dtype == "uint8":
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x


def layer_layouts(record: ModelRecord) -> dict[str, str]:
    """Layout of each tensor of ``record``'s graph (models_store.inspect.tensor_layouts)."""
    plan = input_plan(record)
    key = _key(record)
    with _lock:
        cached = _layouts.get(key)
    if cached is None:
        cached = tensor_layouts(record.model, plan.image, plan.layout)
        with _lock:
            _layouts[key] = cached
    return cached


def canonical_runner(state: AppState, record: ModelRecord) -> CanonicalRunner:
    """The model's runner seen in NCHW (see the module docstring)."""
    plan = input_plan(record)
    inner = _float_runner(state, record, plan) if plan.dtype == "uint8" else state.runner(record)
    grids = state.summary(record).token_grids()
    return CanonicalRunner(inner, plan.layout, layer_layouts(record), grids)


def float_input_model(model: onnx.ModelProto, image: str) -> onnx.ModelProto | None:
    """A copy of ``model`` whose integer ``image`` input is float32, or None when a consumer of
    the input is not a Cast (only then does retyping keep the graph valid and differentiable)."""
    consumers = [n for n in model.graph.node if image in n.input]
    if not consumers or any(n.op_type != "Cast" for n in consumers):
        return None
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    for vi in variant.graph.input:
        if vi.name == image:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return variant


def _float_runner(state: AppState, record: ModelRecord, plan: InputPlan) -> ModelRunner:
    key = _key(record)
    with _lock:
        runner = _float_runners.get(key)
    if runner is not None:
        return runner
    variant = float_input_model(record.model, plan.image)
    if variant is None:
        raise UnsupportedModel(
            f"input {plan.image!r} is {plan.dtype} and is not read through a Cast, so the"
            " methods that perturb or differentiate the image cannot feed it; predict works"
        )
    sha = f"{record.sha256}:float-input:{FLOAT_INPUT_VERSION}"
    path = record.derived_dir / f"float-input-{FLOAT_INPUT_VERSION}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, variant.SerializeToString())
    score = record.card.output.name or graph_outputs(record.model)[0].name
    runner = ModelRunner(
        path,
        record.derived_dir,
        sha,
        plan.image,
        score,
        state.batched,
        input_dims=fed_dims(record, plan.image),
    )
    with _lock:
        runner = _float_runners.setdefault(key, runner)
    return runner
