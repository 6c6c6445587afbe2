"""Gradient family: attributions at input resolution from dS/dX (companion-graph runs).

Every map is (R, C, H, W), w.r.t. the preprocessed input tensor; rendering reduces channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.runtime.runner import ModelRunner

from .cam import CAM_FUNCTIONS, layer_gradients, onehot, upsample
from .registry import (
    BATCH_SIZE,
    MethodOutput,
    Option,
    boolean,
    choice,
    integer,
    number,
    number_or_choice,
    register,
)
from .targets import TOP_CLASS, distinct_rows, resolve_ranks

RECTIFIERS = Option(
    "all",
    choice("all", "relu"),
    "where the rule applies: every rectifying unit (Relu, Clip from 0 as in ReLU6) or Relu "
    "nodes only (Captum's GuidedBackprop/Deconvolution, for parity)",
)


def rectifier_rule(rule: str, options: dict[str, Any]) -> str:
    """The companion graph's ReLU rule for a guided/deconvnet method's options."""
    return f"{rule}:relu" if options["rectifiers"] == "relu" else rule


IG_RULES = ("riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "gausslegendre")


def input_gradient(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    *,
    rule: str = "standard",
    batch_size: int | None = None,
    classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(dS_target/dX, scores) for each row; ``targets`` are classes, ``TOP_CLASS`` (seeded in
    the graph) or resolved ranks (see :func:`explicit_ranks`)."""
    seed = onehot(targets, classes or runner.num_classes(x))
    res = runner.gradients(x, seed, (), rule=rule, input_gradient=True, batch_size=batch_size)
    assert res.input_gradient is not None
    return res.input_gradient, res.score


def explicit_ranks(
    runner: ModelRunner, x: np.ndarray, targets: Sequence[int], batch_size: int | None
) -> tuple[list[int], np.ndarray | None]:
    """Targets the companion graph can seed: ranks past the first resolved by one forward of
    each distinct image (the classes, or None when nothing needed resolving). Every row's
    input gradient needs its own backward pass, so a trunk/head split gains nothing here."""
    if not any(t < TOP_CLASS for t in targets):
        return list(targets), None
    unique, of_row = distinct_rows(x)
    scores, _ = runner.forward(unique, batch_size=batch_size)
    resolved = resolve_ranks(targets, scores[of_row])
    return resolved.tolist(), resolved


@register(
    "saliency",
    "gradient",
    {
        "batch_size": BATCH_SIZE,
        "abs": Option(False, boolean, "return |dS/dX| instead of the signed gradient"),
    },
    uses_layers=False,
    ranked=True,
)
def saliency(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Saliency (Simonyan et al. 2014): dS/dX (render.reduce abs_max gives the classic map)."""
    targets, resolved = explicit_ranks(runner, x, targets, options["batch_size"])
    g, scores = input_gradient(runner, x, targets, batch_size=options["batch_size"])
    return MethodOutput(
        "gradient",
        [np.abs(g) if options["abs"] else g],
        scores,
        resolution="input",
        targets=resolved,
    )


@register(
    "inputxgradient",
    "gradient",
    {"batch_size": BATCH_SIZE},
    uses_layers=False,
    ranked=True,
    picture="signed",
)
def inputxgradient(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Input x Gradient (Shrikumar et al. 2016): X * dS/dX."""
    targets, resolved = explicit_ranks(runner, x, targets, options["batch_size"])
    g, scores = input_gradient(runner, x, targets, batch_size=options["batch_size"])
    return MethodOutput("gradient", [x * g], scores, resolution="input", targets=resolved)


@register(
    "guided_backprop",
    "gradient",
    {"batch_size": BATCH_SIZE, "rectifiers": RECTIFIERS},
    uses_layers=False,
    ranked=True,
)
def guided_backprop(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Guided backpropagation (Springenberg et al. 2015): through each rectifier the gradient
    is g * [unit passes x] * (g > 0); every other op keeps its true derivative."""
    rule = rectifier_rule("guided", options)
    targets, resolved = explicit_ranks(runner, x, targets, options["batch_size"])
    g, scores = input_gradient(runner, x, targets, rule=rule, batch_size=options["batch_size"])
    return MethodOutput("gradient", [g], scores, resolution="input", targets=resolved)


@register(
    "deconvnet",
    "gradient",
    {"batch_size": BATCH_SIZE, "rectifiers": RECTIFIERS},
    uses_layers=False,
    ranked=True,
)
def deconvnet(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Deconvnet (Zeiler & Fergus 2014): through each rectifier the gradient is relu(g) (the
    forward mask is ignored; a ReLU6's flat top still blocks); max pools route to their
    argmax (the "switches")."""
    rule = rectifier_rule("deconvnet", options)
    targets, resolved = explicit_ranks(runner, x, targets, options["batch_size"])
    g, scores = input_gradient(runner, x, targets, rule=rule, batch_size=options["batch_size"])
    return MethodOutput("gradient", [g], scores, resolution="input", targets=resolved)


@register(
    "guided_gradcam",
    "gradient",
    {
        "batch_size": BATCH_SIZE,
        "interpolation": Option(
            "bilinear",
            choice("bilinear", "nearest"),
            "upsampling of the Grad-CAM map to the input size",
        ),
        "rectifiers": RECTIFIERS,
    },
    ranked=True,
)
def guided_gradcam(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop * relu(gradcam) upsampled to
    the input size; several layers: the mean of their upsampled relu(gradcam) maps."""
    res, resolved = layer_gradients(runner, x, targets, layers, batch_size=options["batch_size"])
    if resolved is None:  # the guided run explains the class the first run chose
        resolved = resolve_ranks(targets, res.score)
    size = (x.shape[2], x.shape[3])
    cams = [
        upsample(
            np.maximum(CAM_FUNCTIONS["gradcam"](a.astype(np.float64), g.astype(np.float64)), 0.0),
            size,
            options["interpolation"],
        )
        for a, g in zip(res.activations, res.gradients, strict=False)
    ]
    weight = np.mean(cams, axis=0)
    guided, _ = input_gradient(
        runner,
        x,
        resolved.tolist(),
        rule=rectifier_rule("guided", options),
        batch_size=options["batch_size"],
        classes=res.score.shape[1],
    )
    return MethodOutput(
        "gradient",
        [(guided * weight[:, None]).astype(np.float32)],
        res.score,
        {"gradcam": weight},
        resolution="input",
        targets=resolved,
    )


def smoothgrad_noise(
    x_row: np.ndarray, samples: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """The noise added to one row: N(0, sigma^2), sigma = noise * (max(x) - min(x)), drawn as
    ``rng.standard_normal((samples, *x_row.shape), dtype=float32) * sigma``."""
    sigma = np.float32(noise * (float(x_row.max()) - float(x_row.min())))
    return rng.standard_normal((samples, *x_row.shape), dtype=np.float32) * sigma


@register(
    "smoothgrad",
    "gradient",
    {
        "batch_size": BATCH_SIZE,
        "samples": Option(25, integer(1, 1000), "noisy copies per row"),
        "noise": Option(
            0.15, number(0.0, 10.0), "sigma as a fraction of the row's value range (max - min)"
        ),
        "squared": Option(False, boolean, "average squared gradients (SmoothGrad-Squared)"),
        "seed": Option(0, integer(0, 2**32 - 1), "random seed of the noise"),
    },
    uses_layers=False,
)
def smoothgrad(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """SmoothGrad (Smilkov et al. 2017): mean over ``samples`` noisy copies X + N(0, sigma^2)
    of dS/dX. Rows are processed in order with one ``numpy.random.default_rng(seed)``."""
    n = options["samples"]
    classes = runner.num_classes(x)
    rng = np.random.default_rng(options["seed"])
    out = np.empty_like(x, dtype=np.float32)
    for r in range(x.shape[0]):
        noisy = x[r][None] + smoothgrad_noise(x[r], n, options["noise"], rng)
        g, _ = input_gradient(
            runner, noisy, [targets[r]] * n, batch_size=options["batch_size"], classes=classes
        )
        out[r] = (g.astype(np.float64) ** 2 if options["squared"] else g).mean(axis=0)
    scores, _ = runner.forward(x, batch_size=options["batch_size"])
    return MethodOutput("gradient", [out], scores, resolution="input")


def integration_rule(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, step sizes) on [0, 1], as Captum's approximation methods define them."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    if method == "riemann_trapezoid":
        # Captum's definition, kept for parity: steps of 1/n with the two ends halved (the
        # weights sum to 1 - 1/n; the textbook trapezoid rule would use 1/(n - 1)).
        sizes = np.full(steps, 1.0 / steps)
        sizes[0] = sizes[-1] = 0.5 / steps
        return np.linspace(0.0, 1.0, steps), sizes
    sizes = np.full(steps, 1.0 / steps)
    if method == "riemann_left":
        return np.linspace(0.0, 1.0 - 1.0 / steps, steps), sizes
    if method == "riemann_right":
        return np.linspace(1.0 / steps, 1.0, steps), sizes
    if method == "riemann_middle":
        return np.linspace(0.5 / steps, 1.0 - 0.5 / steps, steps), sizes
    raise ValueError(f"unknown integration rule {method!r}")


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (..., H, W) over the two last axes, edges reflected."""
    radius = max(1, round(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(x, dtype=np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, padded)
    return out.astype(np.float32)


@register(
    "integrated_gradients",
    "gradient",
    {
        "batch_size": BATCH_SIZE,
        "steps": Option(50, integer(2, 1000), "points on the path from baseline to input"),
        "method": Option(
            "riemann_trapezoid", choice(*IG_RULES), "quadrature rule (Captum's names)"
        ),
        "baseline": Option(
            "black",
            number_or_choice(-1e6, 1e6, "black", "blur"),
            "'black' = zeros in model space, 'blur' = the input blurred, "
            "or a constant in model space",
        ),
        "blur_sigma": Option(
            10.0, number(0.0, 1000.0, open_lo=True), "Gaussian sigma in pixels for baseline 'blur'"
        ),
    },
    uses_layers=False,
    picture="signed",
)
def integrated_gradients(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Integrated Gradients (Sundararajan et al. 2017): (X - X') * sum_i s_i dS/dX at
    X' + a_i (X - X'). extras.completeness_gap = sum(attr) - (S(X) - S(X')) per row."""
    steps = options["steps"]
    alphas, sizes = integration_rule(options["method"], steps)
    baseline = options["baseline"]
    if baseline == "black":
        base = np.zeros_like(x)
    elif baseline == "blur":
        base = gaussian_blur(x, options["blur_sigma"])
    else:
        base = np.full_like(x, float(baseline))
    classes = runner.num_classes(x)
    idx = np.asarray(targets, dtype=np.intp)
    attr = np.empty_like(x, dtype=np.float32)
    for r in range(x.shape[0]):
        delta = (x[r] - base[r])[None]
        path = base[r][None] + alphas[:, None, None, None].astype(np.float32) * delta
        g, _ = input_gradient(
            runner,
            path.astype(np.float32),
            [targets[r]] * steps,
            batch_size=options["batch_size"],
            classes=classes,
        )
        total = np.tensordot(sizes, g.astype(np.float64), axes=(0, 0))
        attr[r] = (delta[0] * total).astype(np.float32)
    scores, _ = runner.forward(x, batch_size=options["batch_size"])
    base_scores, _ = runner.forward(base, batch_size=options["batch_size"])
    rows = np.arange(x.shape[0])
    expected = scores[rows, idx].astype(np.float64) - base_scores[rows, idx]
    gap = attr.reshape(len(rows), -1).sum(axis=1, dtype=np.float64) - expected
    return MethodOutput(
        "gradient",
        [attr],
        scores,
        {"completeness_gap": gap.tolist(), "baseline_score": base_scores[rows, idx].tolist()},
        resolution="input",
    )
