"""KServe compatibility: the v1 protocol (`:predict`, `:explain`) and the Open Inference
Protocol (v2: health, model metadata, `/infer`), over the same pipelines as our own API.

v2 carries images as BYTES tensors (each element an encoded image, raw or base64) or the
preprocessed FP32 tensor itself; cnnvis options ride in the request's `parameters`
(`method`, `targets` / `target`, `layer`, `render`, `options`, `top_k`). Triton's binary
tensor extension (`Inference-Header-Content-Length`) is accepted for inputs.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from models_store.errors import ProblemError
from models_store.graph import graph_outputs
from models_store.store import ModelRecord
from schemas.explain import ExplainRequest
from service.api.deps import ApiDep, StateDep
from service.api.problems import parse_request
from service.errors import PayloadTooLarge
from service.imaging.decode import decode_base64_image, decode_image
from service.pipeline.explain import explain
from service.pipeline.layout import input_plan
from service.pipeline.predict import predict_images, predict_tensor
from service.settings import Settings
from service.state import AppState, fed_dims

v1 = APIRouter(prefix="/v1/models", tags=["kserve v1"], dependencies=[ApiDep])
v2 = APIRouter(prefix="/v2", tags=["kserve v2 (open inference protocol)"])

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
_V2_TYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "object": "BYTES"}


# ---- v1 ---------------------------------------------------------------------------------


def _v1_instances(payload: Any, settings: Settings) -> tuple[list[Image.Image], list[Any]]:
    """Images and per-instance targets from {"instances": [...]} or {"inputs": [...]}."""
    if not isinstance(payload, dict):
        raise ProblemError('the body must be a JSON object with "instances"')
    instances = payload.get("instances", payload.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise ProblemError('"instances" must be a non-empty list of images')
    if len(instances) > settings.max_images:
        raise PayloadTooLarge(
            f"{len(instances)} instances; the limit is {settings.max_images} (CNNVIS_MAX_IMAGES)"
        )
    images, targets = [], []
    for i, instance in enumerate(instances):
        target = None
        if isinstance(instance, dict):
            target = instance.get("target")
            encoded = instance.get("data", instance.get("b64"))
            if isinstance(encoded, dict):  # TF-Serving style {"b64": ...} nested in data
                encoded = encoded.get("b64")
        else:
            encoded = instance
        if not isinstance(encoded, str):
            raise ProblemError(
                f'instance {i}: expected a base64 string, {{"data": ...}} or {{"b64": ...}}'
            )
        images.append(_decode_b64(encoded, settings))
        targets.append(target)
    return images, targets


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ProblemError(f"the body is not valid JSON: {exc}") from None


@v1.post("/{name}:predict", summary="KServe v1 predict")
async def v1_predict(name: str, request: Request, state: StateDep) -> dict[str, Any]:
    record = state.store.resolve(name)
    payload = await _json(request)
    images, _ = _v1_instances(payload, state.settings)
    top_k = _top_k(payload.get("top_k", 5), state.settings, "top_k")
    done = await state.admission.run(record.name, predict_images, state, record, images, top_k)
    return {"predictions": [[vars(c) for c in row] for row in done.ranked]}


@v1.post("/{name}:explain", summary="KServe v1 explain")
async def v1_explain(name: str, request: Request, state: StateDep) -> dict[str, Any]:
    record = state.store.resolve(name)
    payload = await _json(request)
    images, targets = _v1_instances(payload, state.settings)
    fields = {k: v for k, v in payload.items() if k not in ("instances", "inputs", "top_k")}
    fields.update(payload.get("parameters") or {})
    fields.pop("parameters", None)
    if "targets" not in fields:
        fields["targets"] = (
            [[t] for t in targets] if all(t is not None for t in targets) else "top1"
        )
    fields.setdefault("outputs", ["heatmap", "stats"])
    body = _explain_request(fields, len(images))
    done = await state.admission.run(record.name, explain, state, record, body, images)
    state.monitor.observe(done.observations)
    predictions = [
        [r.target.model_dump() for r in done.results if r.image == i] for i in range(len(images))
    ]
    return {
        "predictions": predictions,
        "explanations": [r.model_dump(exclude_none=True) for r in done.results],
    }


def _top_k(value: Any, settings: Settings, field: str) -> int:
    """``top_k`` from a protocol body: an integer in [1, CNNVIS_MAX_TOP_K], else a 422."""
    limit = settings.max_top_k
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ProblemError(
            f"{field} must be an integer in [1, {limit}] (CNNVIS_MAX_TOP_K), got {value!r}",
            errors=[{"loc": [field], "msg": f"an integer in [1, {limit}]", "type": "value_error"}],
        )
    return value


def _explain_request(fields: dict[str, Any], images: int) -> ExplainRequest:
    return parse_request(ExplainRequest, {**fields, "images": ["<decoded>"] * images})


def _decode_b64(encoded: str, settings: Settings) -> Image.Image:
    return decode_base64_image(
        encoded, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )


# ---- v2 ---------------------------------------------------------------------------------


def _v2_error(exc: ProblemError) -> JSONResponse:
    """Open Inference Protocol errors are {"error": ...}; we add the problem-details fields."""
    return JSONResponse(
        {
            "error": exc.detail,
            "type": f"https://cnnvis.dev/problems/{exc.slug}",
            "title": exc.title,
            "status": exc.status,
            "detail": exc.detail,
        },
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/problem+json",
    )


@v2.get("", summary="Server metadata")
def v2_server() -> dict[str, Any]:
    from service import __version__

    return {"name": "cnnvis", "version": __version__, "extensions": ["binary_tensor_data"]}


@v2.get("/health/live")
def v2_live() -> dict[str, bool]:
    return {"live": True}


@v2.get("/health/ready")
def v2_ready(state: StateDep) -> JSONResponse:
    try:
        state.store.names()
    except OSError:
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


def _signature(record: ModelRecord) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What ``/infer`` takes and gives, as metadata: the names, datatypes and shapes the
    responses carry (batch -1). The image input is also accepted as encoded BYTES; explanations
    (``parameters.method``) answer the outputs listed in docs/api.md instead."""
    plan = input_plan(record)
    image_dims = list(fed_dims(record, plan.image))
    scores = record.card.output.name or graph_outputs(record.model)[0].name
    classes = _class_count(record)
    meta = [
        (scores, "FP32", [-1, classes]),
        ("top_k_index", "INT64", [-1, -1]),
        ("top_k_probability", "FP32", [-1, -1]),
        ("top_k_label", "BYTES", [-1, -1]),
    ]
    inputs = [{"name": plan.image, "datatype": "FP32", "shape": [-1, *image_dims]}]
    return inputs, [{"name": n, "datatype": d, "shape": shape} for n, d, shape in meta]


def _class_count(record: ModelRecord) -> int:
    if record.card.labels:
        return len(record.card.labels)
    name = record.card.output.name
    outputs = [o for o in graph_outputs(record.model) if o.name == name] or graph_outputs(
        record.model
    )
    last = outputs[0].shape[-1] if outputs[0].shape else None
    return last if isinstance(last, int) and last > 0 else -1


@v2.get("/models/{name}")
@v2.get("/models/{name}/versions/{version}")
def v2_model(name: str, state: StateDep, version: str | None = None) -> JSONResponse:
    try:
        record = state.store.get(name, version)
    except ProblemError as exc:
        return _v2_error(exc)
    inputs, outputs = _signature(record)
    return JSONResponse(
        {
            "name": record.name,
            "versions": state.store.versions(record.name),
            "platform": "onnx_onnxv1",
            "inputs": inputs,
            "outputs": outputs,
        }
    )


@v2.get("/models/{name}/ready")
@v2.get("/models/{name}/versions/{version}/ready")
def v2_model_ready(name: str, state: StateDep, version: str | None = None) -> JSONResponse:
    try:
        record = state.store.get(name, version)
    except ProblemError as exc:
        return _v2_error(exc)
    return JSONResponse({"name": record.name, "ready": True})


@v2.post("/models/{name}/infer", dependencies=[ApiDep])
@v2.post("/models/{name}/versions/{version}/infer", dependencies=[ApiDep])
async def v2_infer(
    name: str, request: Request, state: StateDep, version: str | None = None
) -> Response:
    try:
        record = state.store.get(name, version)
        header, binary = _split_binary(await request.body(), request)
        body, json_size = await _infer(state, record, header, binary)
    except ProblemError as exc:
        return _v2_error(exc)
    if json_size is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_size)},
    )


def _split_binary(body: bytes, request: Request) -> tuple[dict[str, Any], bytes]:
    length = request.headers.get("inference-header-content-length")
    raw = body[: int(length)] if length and length.isdigit() else body
    try:
        header = json.loads(raw or b"null")
    except ValueError as exc:
        raise ProblemError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProblemError('the body must be a JSON object with "inputs"')
    return header, body[len(raw) :]


async def _infer(
    state: AppState, record: ModelRecord, header: dict[str, Any], binary: bytes
) -> tuple[bytes, int | None]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise ProblemError('"inputs" must hold exactly one tensor: the images')
    tensor = inputs[0]
    params = {**(header.get("parameters") or {}), **(tensor.get("parameters") or {})}
    images, x = _v2_images(tensor, binary, record, state.settings)
    method = params.get("method")
    top_k = _top_k(params.get("top_k", 5), state.settings, "parameters.top_k")
    if method is None:
        if x is not None:
            done = await state.admission.run(record.name, predict_tensor, state, record, x, top_k)
        else:
            done = await state.admission.run(
                record.name, predict_images, state, record, images, top_k
            )
        scores_name = record.card.output.name or graph_outputs(record.model)[0].name
        tensors = _predict_tensors(done, scores_name)
        labels = {scores_name: record.card.labels}
    else:
        if images is None:
            raise ProblemError("explanations need encoded images (BYTES), not an FP32 tensor")
        fields = {
            k: params[k] for k in ("method", "layer", "render", "options", "roi") if k in params
        }
        targets = params.get("targets", params.get("target", "top1"))
        fields["targets"] = (
            [targets] if isinstance(targets, (int, str)) and targets != "top1" else targets
        )
        fields["outputs"] = ["array", "overlay"]
        body = _explain_request(fields, len(images))
        explained = await state.admission.run(record.name, explain, state, record, body, images)
        state.monitor.observe(explained.observations)
        tensors = _explain_tensors(explained)
        labels = {}
    outputs = _requested_outputs(header, tensors, labels)
    response: dict[str, Any] = {"model_name": record.name, "model_version": record.version}
    if "id" in header:
        response["id"] = header["id"]
    return _encode_response(response, outputs)


def _v2_images(
    tensor: dict[str, Any], binary: bytes, record: ModelRecord, settings: Settings
) -> tuple[list[Image.Image] | None, np.ndarray | None]:
    datatype = str(tensor.get("datatype", "")).upper()
    shape = tensor.get("shape") or []
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if datatype == "BYTES":
        elements = _bytes_elements(binary[:size]) if size is not None else tensor.get("data")
        if not isinstance(elements, list):
            raise ProblemError("BYTES input needs a data list (or binary data)")
        flat = list(np.asarray(elements, dtype=object).reshape(-1))
        if len(flat) > settings.max_images:
            raise PayloadTooLarge(f"{len(flat)} images; the limit is {settings.max_images}")
        return [_image_element(e, settings) for e in flat], None
    if datatype == "FP32":
        if size is not None:
            x = np.frombuffer(binary[:size], "<f4")
        else:
            x = np.asarray(tensor.get("data"), dtype=np.float32)
        spec = input_plan(record).spec  # the layout resolved (card override or detected)
        want = (
            (spec.channels, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (spec.height, spec.width, spec.channels)
        )
        try:
            x = x.reshape(shape)
        except ValueError:
            raise ProblemError(f"FP32 data of {x.size} values does not fit shape {shape}") from None
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ProblemError(
                f"FP32 input must have shape [N, {', '.join(map(str, want))}]"
                f" (the preprocessed tensor); got {shape}"
            )
        return None, np.ascontiguousarray(x)
    raise ProblemError(f"input datatype {datatype!r} is not supported; send BYTES or FP32")


def _bytes_elements(data: bytes) -> list[bytes]:
    """Triton's binary BYTES layout: per element a 4-byte little-endian length, then bytes."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ProblemError("truncated binary BYTES tensor")
        (n,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _image_element(element: Any, settings: Settings) -> Image.Image:
    if isinstance(element, str):
        return _decode_b64(element, settings)
    if isinstance(element, bytes):
        if element.startswith(_IMAGE_MAGIC):
            return decode_image(
                element, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
        return _decode_b64(element.decode("ascii", "replace"), settings)
    raise ProblemError("each BYTES element must be an encoded image (raw or base64)")


def _predict_tensors(done: Any, scores_name: str) -> dict[str, np.ndarray]:
    ranked = done.ranked
    return {
        scores_name: np.asarray(done.scores, dtype=np.float32),
        "top_k_index": np.array([[c.index for c in r] for r in ranked], np.int64),
        "top_k_probability": np.array([[c.probability for c in r] for r in ranked], np.float32),
        "top_k_label": np.array([[c.label or str(c.index) for c in r] for r in ranked], object),
    }


def _explain_tensors(done: Any) -> dict[str, np.ndarray]:
    maps = [
        np.frombuffer(base64.b64decode(r.array.data), "<f4").reshape(r.array.shape)
        for r in done.results
    ]
    return {
        "heatmap": np.stack(maps).astype(np.float32),
        "image_index": np.array([r.image for r in done.results], np.int64),
        "target": np.array([r.target.index for r in done.results], np.int64),
        "overlay_png": np.array([r.overlay for r in done.results], object),
    }


def _requested_outputs(
    header: dict[str, Any], tensors: dict[str, np.ndarray], labels: dict[str, list[str] | None]
) -> list[tuple[str, np.ndarray, bool]]:
    """(name, tensor, binary) per output to send: those ``outputs`` names (all without it),
    each as JSON or binary (the output's ``binary_data``, else the request's
    ``binary_data_output``), a ``classification: k`` parameter turning it into the top-k
    ``"score:index[:label]"`` strings of the classification extension."""
    params = header.get("parameters") or {}
    default_binary = params.get("binary_data_output", False)
    requested = header.get("outputs")
    if requested is None:
        requested = [{"name": name} for name in tensors]
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise ProblemError('"outputs" must be a list of {"name": ...} objects')
    unknown = sorted({o["name"] for o in requested} - set(tensors))
    if unknown:
        raise ProblemError(f"unknown outputs {unknown}; available: {list(tensors)}")
    chosen = []
    for output in requested:
        name = output["name"]
        oparams = output.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise ProblemError(f"outputs[{name!r}].parameters must be an object")
        binary = oparams.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise ProblemError(f"outputs[{name!r}].parameters.binary_data must be true or false")
        tensor = tensors[name]
        k = oparams.get("classification")
        if k is not None:
            tensor = _classification(name, tensor, k, labels.get(name))
        chosen.append((name, tensor, binary))
    return chosen


def _classification(name: str, tensor: np.ndarray, k: Any, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: per row the k largest values as
    ``"<value>:<index>"`` or ``"<value>:<index>:<label>"``, largest first."""
    if tensor.dtype == object or tensor.ndim != 2:
        raise ProblemError(f"output {name!r} is not a [batch, classes] score tensor")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= tensor.shape[1]:
        raise ProblemError(
            f"outputs[{name!r}].parameters.classification must be an integer in"
            f" [1, {tensor.shape[1]}], got {k!r}"
        )
    order = np.argsort(-tensor, axis=1, kind="stable")[:, :k]
    rows = []
    for row, indices in zip(tensor, order, strict=True):
        rows.append(
            [
                f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "")
                for i in indices
            ]
        )
    return np.array(rows, dtype=object)


def _encode_response(
    response: dict[str, Any], outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The JSON body, or the JSON header followed by the binary tensors (and its length)."""
    blobs: list[bytes] = []
    described = []
    for name, tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _V2_TYPES[tensor.dtype.name],
            "shape": list(tensor.shape),
        }
        if binary:
            blob = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.reshape(-1).tolist()
        described.append(entry)
    head = json.dumps({**response, "outputs": described}).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_binary(tensor: np.ndarray) -> bytes:
    if tensor.dtype == object:  # BYTES: a 4-byte little-endian length before each element
        parts = []
        for element in tensor.reshape(-1):
            data = element if isinstance(element, bytes) else str(element).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()
