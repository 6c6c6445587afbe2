"""Work limits: how many model runs one explain request may ask for.

Checked before any work starts, from the resolved options and the graph's static shapes, so
an expensive request is refused at once (422 naming the setting and its value) instead of
occupying a worker for minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models_store.errors import ProblemError
from models_store.inspect import GraphSummary
from schemas.explain import Faithfulness
from service.explain import get_method
from service.explain.faithfulness import forwards
from service.explain.registry import resolve_options
from service.settings import Settings


def check_work(
    settings: Settings,
    method: str,
    options: dict[str, Any],
    layers: Sequence[str],
    summary: GraphSummary,
    input_hw: tuple[int, int],
    faithfulness: Faithfulness | None = None,
    rows: int = 1,
) -> None:
    """``rows``: the results the request makes (images x targets), which the faithfulness
    checks multiply."""
    resolved = resolve_options(get_method(method), options)  # also validates them
    if faithfulness is not None:
        check_faithfulness(settings, faithfulness, rows)
    if method in ("scorecam", "ablationcam"):
        channels = 0
        for layer in layers:
            found = summary.layer(layer)
            channels_of = found.channels if len(found.shape) in (3, 4) else None
            width = channels_of if isinstance(channels_of, int) else None
            known = [n for n in (width, resolved.get("max_channels")) if n is not None]
            channels += min(known) if known else 0
        _limit(
            channels,
            settings.max_cam_channels,
            "CNNVIS_MAX_CAM_CHANNELS",
            f"{method} perturbs {channels} channels per image; pass options.max_channels",
        )
    elif method == "occlusion":
        (wh, ww), (sh, sw) = resolved["window"], resolved["stride"]
        h, w = input_hw
        windows = max(0, (h - wh) // sh + 1) * max(0, (w - ww) // sw + 1)
        _limit(
            windows,
            settings.max_occlusion_windows,
            "CNNVIS_MAX_OCCLUSION_WINDOWS",
            f"occlusion with window {[wh, ww]} and stride {[sh, sw]} makes {windows}"
            " windows per image; use a larger stride",
        )
    elif method == "smoothgrad":
        _limit(
            resolved["samples"],
            settings.max_smoothgrad_samples,
            "CNNVIS_MAX_SMOOTHGRAD_SAMPLES",
            f"options.samples={resolved['samples']}",
        )
    elif method == "integrated_gradients":
        _limit(
            resolved["steps"],
            settings.max_ig_steps,
            "CNNVIS_MAX_IG_STEPS",
            f"options.steps={resolved['steps']}",
        )


def check_faithfulness(settings: Settings, faithfulness: Faithfulness, rows: int) -> None:
    """Steps per check, and the forwards of the whole request: at most what
    ``CNNVIS_MAX_IMAGES`` one-target rows at ``CNNVIS_MAX_FAITHFULNESS_STEPS`` would run."""
    steps = faithfulness.steps
    _limit(
        steps,
        settings.max_faithfulness_steps,
        "CNNVIS_MAX_FAITHFULNESS_STEPS",
        f"faithfulness.steps={steps}",
    )
    budget = settings.max_images * (1 + 2 * (settings.max_faithfulness_steps + 1))
    needed = forwards(rows, faithfulness)
    if needed > budget:
        raise ProblemError(
            f"faithfulness with steps={steps} on {rows} results runs up to {needed} forwards:"
            f" over the limit of {budget} (CNNVIS_MAX_IMAGES={settings.max_images} results at"
            f" CNNVIS_MAX_FAITHFULNESS_STEPS={settings.max_faithfulness_steps});"
            " ask for fewer targets or faithfulness.steps"
        )


def _limit(value: int, limit: int, setting: str, what: str) -> None:
    if value > limit:
        raise ProblemError(f"{what}: over the limit {setting}={limit}")
