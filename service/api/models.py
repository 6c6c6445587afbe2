"""The model registry: list, register, inspect, delete."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from models_store.errors import InvalidCard, ProblemError
from models_store.graph import graph_inputs, graph_outputs
from models_store.store import ModelRecord, parse_ref
from schemas.card import ModelCard
from schemas.models import (
    Deleted,
    LayerInfo,
    LayerList,
    ModelInfo,
    ModelInfoList,
    ModelList,
    TensorSpec,
)
from service.api.deps import AdminDep, StateDep, VersionQuery
from service.api.problems import summarize_errors, validation_errors
from service.errors import PayloadTooLarge
from service.pipeline.layout import input_plan, layer_layouts
from service.state import AppState

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_info(state: AppState, record: ModelRecord) -> ModelInfo:
    session = state.session(record)
    return ModelInfo(
        name=record.name,
        version=record.version,
        versions=state.store.versions(record.name),
        sha256=record.sha256,
        # `layout: auto` shown as what it resolved to (detected from the graph)
        card=record.card.model_copy(
            update={
                "input": record.card.input.model_copy(update={"layout": input_plan(record).layout})
            }
        ),
        inputs=[TensorSpec(**vars(t)) for t in graph_inputs(record.model)],
        outputs=[TensorSpec(**vars(t)) for t in graph_outputs(record.model)],
        default_layer=state.default_layer(record),
        providers=session.providers,
    )


@router.get("", response_model=ModelList | ModelInfoList, summary="List models")
def list_models(
    state: StateDep, verbose: Annotated[bool, Query(description="Full ModelInfo each.")] = False
) -> ModelList | ModelInfoList:
    if verbose:
        return ModelInfoList(models=[model_info(state, r) for r in state.store.records()])
    return ModelList(models=state.store.names())


@router.post(
    "",
    status_code=201,
    response_model=ModelInfo,
    dependencies=[AdminDep],
    summary="Register a model (multipart: `model` .onnx file + `card` JSON)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["model", "card"],
                        "properties": {
                            "model": {"type": "string", "format": "binary"},
                            "card": {
                                "type": "string",
                                "description": "The model card as JSON (a file part or text).",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def register_model(request: Request, state: StateDep) -> ModelInfo:
    limit = state.settings.max_model_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + 1024 * 1024:
        raise PayloadTooLarge(f"the upload is {declared} bytes; the limit is {limit}")
    try:
        form = await request.form(max_files=2, max_fields=4, max_part_size=1024 * 1024)
    except ProblemError:
        raise
    except Exception as exc:
        raise ProblemError(f"the multipart body could not be read: {exc}") from None
    model_part, card_part = form.get("model"), form.get("card")
    if model_part is None or isinstance(model_part, str):
        raise ProblemError("the multipart body needs a 'model' file part (the .onnx file)")
    if card_part is None:
        raise ProblemError("the multipart body needs a 'card' part (the model card as JSON)")
    data = await model_part.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the model is larger than {limit} bytes (CNNVIS_MAX_MODEL_BYTES)")
    card_text = card_part if isinstance(card_part, str) else (await card_part.read()).decode()
    card = parse_card(card_text)
    record = await run_in_threadpool(state.store.add, data, card)
    return model_info(state, record)


def parse_card(text: str) -> ModelCard:
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise InvalidCard(f"the card is not valid JSON: {exc}") from None
    try:
        return ModelCard.model_validate(payload)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise InvalidCard(f"card: {summarize_errors(errors)}", errors=errors) from None


@router.get("/{name}", response_model=ModelInfo, summary="One model (name or name@version)")
def get_model(name: str, state: StateDep, version: VersionQuery = None) -> ModelInfo:
    return model_info(state, state.store.resolve(name, version))


@router.delete("/{name}", response_model=Deleted, dependencies=[AdminDep], summary="Delete a model")
def delete_model(name: str, state: StateDep, version: VersionQuery = None) -> Deleted:
    bare, ref_version = parse_ref(name)
    removed = state.store.remove(bare, ref_version or version)
    state.forget(state.store.root / bare)
    return Deleted(name=bare, versions=removed)


@router.get("/{name}/layers", response_model=LayerList, summary="Candidate layers")
def list_layers(name: str, state: StateDep, version: VersionQuery = None) -> LayerList:
    record = state.store.resolve(name, version)
    summary = state.summary(record)
    layouts = layer_layouts(record)  # from the input layout in use (the card's or detected)
    return LayerList(
        layers=[
            LayerInfo(
                name=layer.name,
                op_type=layer.op_type,
                shape=list(layer.shape),
                spatial=layer.spatial,
                layout=layouts.get(layer.name, layer.layout),
            )
            for layer in summary.layers
        ],
        default=state.default_layer(record),
    )
