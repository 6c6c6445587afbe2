"""Responses of the model registry endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field

from schemas.card import ModelCard


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int | str | None] = Field(..., description="null or a name = dynamic.")


class ModelInfo(BaseModel):
    name: str
    version: str
    ready: bool = Field(True, description="KServe v1: the model can serve requests.")
    versions: list[str]
    sha256: str
    card: ModelCard
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    default_layer: str | None
    providers: list[str] = Field(
        ..., description="onnxruntime providers of the open session, first = in use."
    )


class ModelList(BaseModel):
    models: list[str]


class ModelInfoList(BaseModel):
    models: list[ModelInfo]


class LayerInfo(BaseModel):
    name: str = Field(..., description="Tensor name: pass it as `layer`.")
    op_type: str
    shape: list[int | str | None]
    spatial: bool
    layout: str = Field(
        "NCHW",
        description="Axis order of the tensor (letters N, C, H, W): NCHW, or e.g. NHWC in a"
        " graph exported from Keras. Activations and CAMs read the channels from it.",
    )


class LayerList(BaseModel):
    layers: list[LayerInfo]
    default: str | None = Field(..., description='The layer `layer: "auto"` chooses.')


class Deleted(BaseModel):
    name: str
    versions: list[str]
