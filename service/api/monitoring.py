"""Attribution baselines and drift (docs/monitoring.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from models_store.errors import ProblemError
from models_store.store import ModelRecord
from schemas.explain import ExplainRequest, Method
from schemas.monitoring import (
    BaselineClass,
    BaselineInfo,
    BaselineList,
    BaselineRequest,
    BaselinesDeleted,
    DriftReport,
)
from service.api.deps import AdminDep, StateDep, VersionQuery
from service.errors import ServiceUnavailable
from service.imaging.decode import decode_base64_image
from service.monitoring.baselines import Baseline, ReferenceSet
from service.monitoring.monitor import iso
from service.pipeline.explain import Explained, explain
from service.state import AppState

router = APIRouter(prefix="/v1/models", tags=["monitoring"])
MethodQuery = Annotated[Method, Query(description="The explanation method.")]


class BaselineNotFound(ProblemError):
    status = 404
    title = "Baseline not found"
    slug = "baseline-not-found"


def baseline_info(baseline: Baseline) -> BaselineInfo:
    return BaselineInfo(
        method=baseline.method,
        grid=baseline.grid,
        created=iso(baseline.created) or "",
        skipped=baseline.skipped,
        classes=[
            BaselineClass(
                class_=k,
                label=c.label,
                count=c.count,
                source=c.source,
                updated=iso(c.updated) or "",
                regions={name: mean for name, (mean, _) in sorted(c.regions.items())},
            )
            for k, c in sorted(baseline.classes.items())
        ],
    )


def _monitor_ready(state: AppState) -> None:
    if state.monitor.baselines is None:
        raise ServiceUnavailable("monitoring is switched off (CNNVIS_MONITORING=false)")


def _targets(body: BaselineRequest, record: ModelRecord) -> list[int | str] | None:
    """The per-image classes, checked against the card's labels (naming ``targets[i]``)."""
    if body.targets == "top1":
        return None
    labels = record.card.labels
    for i, t in enumerate(body.targets):
        if isinstance(t, str) and labels is None:
            raise ProblemError(
                f"targets[{i}]: {t!r} is a label, but the card has none; use indices"
            )
        if isinstance(t, str) and t not in labels:  # type: ignore[operator]
            raise ProblemError(f"targets[{i}]: {t!r} is not one of the card's labels")
        if isinstance(t, int) and labels is not None and t >= len(labels):
            raise ProblemError(
                f"targets[{i}]: class index {t} is out of range (the card has {len(labels)} labels)"
            )
    return list(body.targets)


def _explain_chunk(
    state: AppState, record: ModelRecord, request: ExplainRequest, encoded: list[str], first: int
) -> Explained:
    images: list[Image.Image] = []
    for i, s in enumerate(encoded):
        try:
            images.append(
                decode_base64_image(
                    s,
                    max_bytes=state.settings.max_image_bytes,
                    max_pixels=state.settings.max_image_pixels,
                )
            )
        except ProblemError as exc:
            raise type(exc)(
                f"images[{first + i}]: {exc.detail}", errors=exc.errors, headers=exc.headers
            ) from None
    return explain(state, record, request, images)


@router.post(
    "/{name}/baselines",
    status_code=201,
    response_model=BaselineInfo,
    dependencies=[AdminDep],
    summary="Post a reference set: its explanations become the method's baseline",
)
async def post_baseline(
    name: str,
    body: BaselineRequest,
    request: Request,
    state: StateDep,
    version: VersionQuery = None,
) -> BaselineInfo:
    _monitor_ready(state)
    record = state.store.resolve(name, version)
    targets = _targets(body, record)
    reference = ReferenceSet(state.monitor.grid)
    step = state.settings.max_images
    for start in range(0, len(body.images), step):
        chunk = body.images[start : start + step]
        explain_request = ExplainRequest(
            images=["<baseline>"] * len(chunk),
            method=body.method,
            layer=body.layer,
            targets="top1" if targets is None else [[t] for t in targets[start : start + step]],
            options=body.options,
            render=body.render,
            outputs=["array"],  # the cheapest output; the maps come as observations
        )
        done = await state.admission.run(
            record.name,
            _explain_chunk,
            state,
            record,
            explain_request,
            chunk,
            start,
            disconnected=request.is_disconnected,
        )
        reference.add(done.observations)
    if not reference.profiles:
        raise ProblemError(
            f"none of the {len(body.images)} reference maps has positive attribution;"
            " nothing to average (try another method or layer)"
        )
    try:
        stored = await run_in_threadpool(
            state.monitor.store_posted, record, body.method, reference, body.replace
        )
    except OSError as exc:  # the store's disk, not the client: the old file is intact
        raise ServiceUnavailable(
            f"the baseline could not be written ({exc}); the previous one, if any, is unchanged"
        ) from None
    return baseline_info(stored)


@router.get(
    "/{name}/baselines", response_model=BaselineList, summary="The baselines of a model version"
)
def list_baselines(name: str, state: StateDep, version: VersionQuery = None) -> BaselineList:
    _monitor_ready(state)
    record = state.store.resolve(name, version)
    baselines = state.monitor.baselines
    assert baselines is not None
    methods = baselines.methods(record.name, record.version)
    found = [baselines.get(record.name, record.version, m) for m in methods]
    return BaselineList(
        model={"name": record.name, "version": record.version},
        baselines=[baseline_info(b) for b in found if b is not None],
    )


@router.delete(
    "/{name}/baselines",
    response_model=BaselinesDeleted,
    dependencies=[AdminDep],
    summary="Delete a version's baselines (one method, or all)",
)
def delete_baselines(
    name: str,
    state: StateDep,
    version: VersionQuery = None,
    method: Annotated[Method | None, Query(description="Only this method's.")] = None,
) -> BaselinesDeleted:
    _monitor_ready(state)
    record = state.store.resolve(name, version)
    baselines = state.monitor.baselines
    assert baselines is not None
    removed = baselines.delete(record.name, record.version, method)
    if not removed:
        what = f"a {method} baseline" if method else "baselines"
        raise BaselineNotFound(f"{record.ref} has no {what}")
    return BaselinesDeleted(model={"name": record.name, "version": record.version}, methods=removed)


@router.get(
    "/{name}/drift",
    response_model=DriftReport,
    summary="Attribution drift of this replica's recent explanations against the baseline",
)
def get_drift(
    name: str, state: StateDep, method: MethodQuery = "gradcam", version: VersionQuery = None
) -> DriftReport:
    _monitor_ready(state)
    record = state.store.resolve(name, version)
    return state.monitor.report(record, method)
