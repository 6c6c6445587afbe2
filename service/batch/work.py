"""One shard of a batch job through the service's own code: decode (the service's safe
decoder), predict and explain (service/pipeline), the map and its signals as the HTTP API
returns them. The single-process loop and the Ray actors both call :func:`explain_shard`."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.explain import ExplainRequest, ExplainResult
from service.batch.inputs import Item
from service.imaging.decode import decode_image
from service.pipeline.explain import explain
from service.pipeline.predict import predict_images
from service.settings import Settings
from service.state import AppState

OUTPUTS = ["array", "stats"]


@dataclass
class Job:
    """What every shard of one job shares: the model and the explain request (no images)."""

    model: str
    request: dict[str, Any]  # ExplainRequest fields except images
    store: Path
    with_map: bool = True

    def body(self, targets: Any = None) -> ExplainRequest:
        fields = {**self.request, "images": ["-"], "outputs": OUTPUTS}
        if targets is not None:
            fields["targets"] = targets
        return ExplainRequest.model_validate(fields)


def open_state(job: Job) -> AppState:
    """A service state for batch work: no monitoring, no sampling threads."""
    settings = Settings(store=job.store, monitoring=False, sampling=False)
    return AppState.open(settings)


def close_state(state: AppState) -> None:
    state.admission.close()
    state.monitor.close()


def explain_shard(state: AppState, job: Job, items: list[Item]) -> list[dict[str, Any]]:
    """One row per (image, target); a file that does not decode or explain is an error row."""
    record = state.store.resolve(job.model)
    job.body()  # a bad request fails the job up front, not every row
    rows: list[dict[str, Any]] = []
    decoded: list[tuple[Item, Image.Image]] = []
    for item in items:
        try:
            data = Path(item.path).read_bytes()
            image = decode_image(
                data,
                max_bytes=state.settings.max_image_bytes,
                max_pixels=state.settings.max_image_pixels,
            )
            decoded.append((item, image))
        except (OSError, ProblemError) as exc:
            rows.append(_error_row(item, exc))
    # labelled images are explained for their label, the others for the request's targets
    labelled = [(i, im) for i, im in decoded if i.label is not None]
    unlabelled = [(i, im) for i, im in decoded if i.label is None]
    if unlabelled:
        rows += _explain_group(state, record, job, unlabelled, None)
    if labelled:
        targets = [[_label_target(i.label, record)] for i, _ in labelled]
        rows += _explain_group(state, record, job, labelled, targets)
    order = {item.relative: k for k, item in enumerate(items)}
    rows.sort(key=lambda r: (order[r["path"]], r["rank"]))
    return rows


def _label_target(label: str | None, record: ModelRecord) -> int | str:
    assert label is not None
    return int(label) if label.isdigit() else label


def _explain_group(
    state: AppState,
    record: ModelRecord,
    job: Job,
    group: list[tuple[Item, Image.Image]],
    targets: Any,
) -> list[dict[str, Any]]:
    images = [im for _, im in group]
    try:
        predicted = predict_images(state, record, images, 1)
        done = explain(state, record, job.body(targets), images)
    except ProblemError as exc:
        if len(group) == 1:
            return [_error_row(group[0][0], exc)]
        # one bad row (say an unknown label) must not take its neighbours with it
        rows = []
        for k, pair in enumerate(group):
            own = None if targets is None else [targets[k]]
            rows += _explain_group(state, record, job, [pair], own)
        return rows
    rows, seen = [], [0] * len(group)
    for result in done.results:
        item = group[result.image][0]
        top = predicted.ranked[result.image][0]
        rows.append(_row(item, result, seen[result.image], top.index, top.label, job.with_map))
        seen[result.image] += 1
    return rows


def _row(
    item: Item, result: ExplainResult, rank: int, pred: int, pred_label: str | None, with_map: bool
) -> dict[str, Any]:
    stats = result.stats
    assert stats is not None and result.array is not None
    values = np.frombuffer(base64.b64decode(result.array.data), dtype="<f4")
    return {
        "path": item.relative,
        "label": item.label,
        "error": None,
        "rank": rank,
        "prediction": pred,
        "prediction_label": pred_label,
        "target": result.target.index,
        "target_label": result.target.label,
        "score": result.target.score,
        "probability": result.target.probability,
        "entropy": stats.entropy,
        "sparseness": stats.sparseness,
        "top5_share": stats.top5_share,
        "peak": stats.peak,
        "region_shares": None if stats.region_shares is None else str(stats.region_shares),
        "map_shape": result.array.shape,
        "map": values.tolist() if with_map else None,
    }


def _error_row(item: Item, exc: Exception) -> dict[str, Any]:
    detail = getattr(exc, "detail", None) or str(exc)
    return {"path": item.relative, "label": item.label, "error": detail, "rank": 0}
