"""From a validated request to a job's work: objectives resolved against the model's graph
(every mistake a 422 naming the field, before any job exists), the model's Target, and the
closures the JobManager runs."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from models_store.errors import ProblemError
from models_store.graph import graph_outputs
from models_store.store import ModelRecord
from schemas.featurevis import (
    DeepDreamRequest,
    FeatureVisRequest,
    InvertRequest,
    Param,
    Priors,
    Transforms,
)
from schemas.featurevis import Objective as ObjectiveSpec
from service.imaging.decode import to_8bit
from service.jobs import Work
from service.settings import Settings
from service.state import AppState

from . import objectives as O
from .model import Preprocess, Target
from .optimize import DreamSettings, deepdream, visualize
from .optimize import Settings as OptSettings
from .transforms import Transform, standard


class InvalidJob(ProblemError):
    title = "Invalid job request"
    slug = "invalid-job"


def invalid(loc: list[str | int], msg: str) -> InvalidJob:
    where = ".".join(str(p) for p in loc)
    return InvalidJob(
        f"{where}: {msg}",
        errors=[{"loc": [str(p) for p in loc], "msg": msg, "type": "value_error"}],
    )


def check_limits(settings: Settings, steps: int, size: int | None, batch: int = 1) -> None:
    if steps > settings.max_job_steps:
        raise invalid(
            ["steps"],
            f"{steps} steps exceed the limit (CNNVIS_MAX_JOB_STEPS) of {settings.max_job_steps}",
        )
    if size is not None and size > settings.max_job_size:
        raise invalid(
            ["size"],
            f"{size} px exceeds the limit (CNNVIS_MAX_JOB_SIZE) of {settings.max_job_size}",
        )
    if batch > settings.max_job_batch:
        raise invalid(
            ["batch"],
            f"a batch of {batch} exceeds the limit (CNNVIS_MAX_JOB_BATCH)"
            f" of {settings.max_job_batch}",
        )


_depends: dict[str, frozenset[str]] = {}
_depends_lock = threading.Lock()


def _image_dependents(record: ModelRecord, image: str) -> frozenset[str]:
    with _depends_lock:
        found = _depends.get(record.sha256)
    if found is None:
        reached = {image}
        for node in record.model.graph.node:  # topologically sorted
            if any(i in reached for i in node.input):
                reached.update(o for o in node.output if o)
        found = frozenset(reached)
        with _depends_lock:
            _depends[record.sha256] = found
    return found


def _score(record: ModelRecord) -> str:
    return record.card.output.name or graph_outputs(record.model)[0].name


class Resolver:
    """Turns ``schemas.featurevis.Objective`` into ``featurevis.objectives`` for a model."""

    def __init__(self, state: AppState, record: ModelRecord) -> None:
        self.state = state
        self.record = record
        self.logits = _score(record)

    def layer(self, name: str | None, loc: list[str | int]) -> tuple[str, tuple[Any, ...]]:
        """The tensor and its canonical (K, h, w) shape (dims may be symbolic)."""
        if name is None:
            raise invalid(loc, "this objective needs a layer")
        if name == "auto":
            default = self.state.default_layer(self.record)
            if default is None:
                raise invalid(loc, "the model has no default layer; name one from /layers")
            name = default
        summary = self.state.summary(self.record)
        for layer in summary.layers:
            if layer.name != name:
                continue
            if layer.grid is not None:  # read as its patch grid (docs/methods.md)
                return name, (layer.channels, layer.grid.height, layer.grid.width)
            order = [layer.layout.index(a) for a in "CHW"]
            return name, tuple(layer.shape[i] for i in order)
        model = self.record.model
        known = any(name in n.output for n in model.graph.node) or any(
            name == i.name for i in model.graph.input
        )
        if not known:
            raise invalid(
                loc, f"no tensor named {name!r}; GET /v1/models/{{name}}/layers lists the layers"
            )
        image = self.record.card.input.name or model.graph.input[0].name
        if name not in _image_dependents(self.record, image):
            raise invalid(
                loc,
                f"{name!r} does not depend on the image input, so no gradient"
                " reaches the input from it",
            )
        raise invalid(
            loc,
            f"{name!r} is not a spatial layer from the image to the score"
            " (GET /v1/models/{name}/layers lists them)",
        )

    @staticmethod
    def _channel(value: int | None, shape: tuple[Any, ...], loc: list[str | int]) -> int:
        if value is None:
            raise invalid(loc, "this objective needs a channel")
        k = shape[0]
        if isinstance(k, int) and value >= k:
            raise invalid(
                loc, f"channel {value} is out of range: the layer has {k} channels (0..{k - 1})"
            )
        return value

    def _class(self, value: int | str | None, loc: list[str | int]) -> int:
        labels = self.record.card.labels or []
        if value is None:
            raise invalid(loc, "a class objective needs a class (index or label)")
        if isinstance(value, str):
            if value in labels:
                return labels.index(value)
            if value.isdigit():
                value = int(value)
            else:
                raise invalid(loc, f"no class labelled {value!r}")
        n = len(labels) or self.state.runner(self.record).num_classes()
        if not 0 <= value < n:
            raise invalid(loc, f"class {value} is out of range: the model has {n} classes")
        return value

    def resolve(self, spec: ObjectiveSpec, loc: list[str | int]) -> O.Objective:
        objective = self._resolve(spec, loc)
        return objective if spec.weight == 1.0 else spec.weight * objective

    def _resolve(self, spec: ObjectiveSpec, loc: list[str | int]) -> O.Objective:
        if spec.sum is not None:
            terms = tuple(self.resolve(s, [*loc, "sum", i]) for i, s in enumerate(spec.sum))
            return O.Sum(terms, (1.0,) * len(terms))
        if spec.interpolate is not None:
            a, b = (
                self.resolve(s, [*loc, "interpolate", i]) for i, s in enumerate(spec.interpolate)
            )
            return O.Interpolate(a, b)
        if spec.type == "class":
            return O.Class(self.logits, self._class(spec.class_, [*loc, "class"]))
        layer, shape = self.layer(spec.layer, [*loc, "layer"])
        if spec.type == "channel":
            return O.Channel(layer, self._channel(spec.channel, shape, [*loc, "channel"]))
        if spec.type == "neuron":
            channel = self._channel(spec.channel, shape, [*loc, "channel"])
            for axis, value, dim in (("y", spec.y, shape[1]), ("x", spec.x, shape[2])):
                if value is not None and isinstance(dim, int) and value >= dim:
                    raise invalid(
                        [*loc, axis],
                        f"{value} is outside the layer's {dim}"
                        f" {'rows' if axis == 'y' else 'columns'}",
                    )
            return O.Neuron(layer, channel, x=spec.x, y=spec.y)
        if spec.type == "layer":
            return O.LayerEnergy(layer)
        if spec.type == "diversity":
            return O.Diversity(layer)
        assert spec.type == "direction"
        if not spec.vector:
            raise invalid([*loc, "vector"], "a direction objective needs a vector")
        if isinstance(shape[0], int) and len(spec.vector) != shape[0]:
            raise invalid(
                [*loc, "vector"], f"{len(spec.vector)} values for a layer of {shape[0]} channels"
            )
        return O.Direction(layer, tuple(spec.vector))


def make_target(state: AppState, record: ModelRecord, rule: str) -> Target:
    from service.pipeline.layout import canonical_runner, input_plan

    spec = input_plan(record).nchw
    pre = Preprocess(spec.scale, list(spec.mean), list(spec.std), spec.color)
    return Target(canonical_runner(state, record), pre, (spec.height, spec.width), rule)


def transforms_of(spec: Transforms) -> list[Transform]:
    if not spec.enabled:
        return []
    return standard(spec.pad, spec.jitter, spec.scales, spec.angles, spec.jitter2)


def _opt_settings(
    steps: int,
    lr: float,
    size: int,
    batch: int,
    seed: int | None,
    param: Param,
    transforms: Transforms,
    priors: Priors,
) -> OptSettings:
    return OptSettings(
        steps=steps, lr=lr, size=size, batch=batch, param=param.kind,
        decorrelate=param.decorrelate, sd=param.sd, decay_power=param.decay_power,
        transforms=transforms_of(transforms), seed=seed, tv=priors.tv, l2=priors.l2,
        alpha=priors.alpha,
    )  # fmt: skip


def featurevis_work(state: AppState, record: ModelRecord, body: FeatureVisRequest) -> Work:
    check_limits(state.settings, body.steps, body.size, body.batch)
    objective = Resolver(state, record).resolve(body.objective, ["objective"])
    settings = _opt_settings(
        body.steps, body.lr, body.size, body.batch, body.seed,
        body.param, body.transforms, body.priors,
    )  # fmt: skip

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        target = make_target(state, record, body.rule)
        return visualize(target, objective, settings, progress, cancelled)

    return work


def image_array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A posted image as a (1, 3, h, w) array in [0, 1], resized (bilinear) to ``size``."""
    rgb = to_8bit(image, "RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return (np.asarray(rgb, dtype=np.float64) / 255.0).transpose(2, 0, 1)[None]


def deepdream_work(
    state: AppState, record: ModelRecord, body: DeepDreamRequest, image: Image.Image
) -> Work:
    check_limits(state.settings, body.steps * body.octaves, body.size)
    objective = Resolver(state, record).resolve(body.objective, ["objective"])
    spec = record.card.input
    side = body.size or max(spec.height, spec.width)
    w, h = image.size
    scale = side / max(w, h)
    shape = (max(8, round(h * scale)), max(8, round(w * scale)))
    pixels = image_array(image, shape)
    settings = DreamSettings(
        body.octaves, body.octave_scale, body.steps, body.step_size, body.max_value,
        body.jitter, body.seed,
    )  # fmt: skip

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        target = make_target(state, record, body.rule)
        return deepdream(target, objective, pixels, settings, progress, cancelled)

    return work


def invert_work(
    state: AppState, record: ModelRecord, body: InvertRequest, image: Image.Image
) -> Work:
    check_limits(state.settings, body.steps, body.size)
    layer, _ = Resolver(state, record).layer(body.layer, ["layer"])
    settings = _opt_settings(
        body.steps, body.lr, body.size, 1, body.seed, body.param, body.transforms, body.priors
    )
    spec = record.card.input
    pixels = image_array(image, (spec.height, spec.width))

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        target = make_target(state, record, body.rule)
        features = target.activations(pixels, [layer])[layer]
        objective = O.FeatureMatch(layer, features)
        return visualize(target, objective, settings, progress, cancelled)

    return work
