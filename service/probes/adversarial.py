"""POST /v1/models/{name}/adversarial: FGSM or PGD on the posted pixels, the prediction and the
Grad-CAM before and after (docs/probes.md). Runs in a worker thread."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models_store.store import ModelRecord
from schemas.explain import ExplainRequest, Target
from schemas.probes import AdversarialRequest, AdversarialResult, BudgetResult, MapSimilarity
from service.imaging.decode import to_8bit
from service.imaging.preprocess import preprocess
from service.imaging.render import encode_png, to_base64
from service.pipeline.explain import explain
from service.pipeline.layout import canonical_runner, input_plan
from service.pipeline.targets import class_index
from service.probes.attacks import amplified, attack
from service.probes.fields import at_most, bad_field
from service.probes.pixels import PixelMap
from service.probes.similarity import map_similarity
from service.scores import class_score, probabilities
from service.state import AppState

PROBE_IMAGE = "<probe>"  # explain() gets decoded images; its `images` field is a placeholder


@dataclass
class Attacked:
    target: Target | None
    step_size: float
    layer: str | None
    provider: str
    results: list[AdversarialResult]
    timings_ms: dict[str, float]
    pngs: list[bytes]  # the perturbed image of each posted one


def check_limits(body: AdversarialRequest, state: AppState) -> float:
    """The step size, after every budget, step count and step size is checked."""
    s = state.settings
    at_most("epsilon", body.epsilon, s.max_adversarial_epsilon, "CNNVIS_MAX_ADVERSARIAL_EPSILON")
    for i, eps in enumerate(body.sweep or []):
        at_most(f"sweep.{i}", eps, s.max_adversarial_epsilon, "CNNVIS_MAX_ADVERSARIAL_EPSILON")
    if body.sweep is not None:
        at_most("sweep", len(body.sweep), s.max_adversarial_sweep, "CNNVIS_MAX_ADVERSARIAL_SWEEP")
    if body.attack == "fgsm":
        return body.epsilon
    at_most("steps", body.steps, s.max_adversarial_steps, "CNNVIS_MAX_ADVERSARIAL_STEPS")
    step = body.step_size if body.step_size is not None else 2.5 * body.epsilon / body.steps
    if step > body.epsilon:
        raise bad_field("step_size", f"{step:g} is larger than epsilon {body.epsilon:g}")
    return step


def _top1(state: AppState, record: ModelRecord, images: list[Image.Image]) -> list[Target]:
    runner = canonical_runner(state, record)
    scores, _ = runner.forward(preprocess(images, input_plan(record).nchw))
    probs = probabilities(scores, record.card)
    return [
        Target(**vars(class_score(int(np.argmax(s)), s, p, record.card)))
        for s, p in zip(scores, probs, strict=True)
    ]


def adversarial(
    state: AppState, record: ModelRecord, body: AdversarialRequest, images: list[Image.Image]
) -> Attacked:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    step = check_limits(body, state)
    card = record.card
    runner = canonical_runner(state, record)
    spec = input_plan(record).nchw
    pixels = [np.asarray(to_8bit(img, "RGB")) for img in images]
    rgb = [Image.fromarray(u) for u in pixels]
    before = _top1(state, record, rgb)
    classes = runner.num_classes(preprocess(rgb[:1], spec))
    aimed = None if body.target is None else class_index(body.target, card, classes)
    budgets = [body.epsilon, *sorted(set(body.sweep or []) - {body.epsilon})]
    maps = [PixelMap.plan(u.shape[:2], spec) for u in pixels]
    rows = [(i, eps) for i in range(len(images)) for eps in budgets]  # image-major
    steps = 1 if body.attack == "fgsm" else body.steps
    sizes = [eps if body.attack == "fgsm" else step * eps / body.epsilon for _, eps in rows]
    perturbed = attack(
        runner,
        [maps[i] for i, _ in rows],
        [pixels[i] for i, _ in rows],
        card,
        [before[i].index for i, _ in rows],
        [aimed] * len(rows),
        [eps for _, eps in rows],
        steps,
        sizes,
    )
    timings["attack"] = _lap(clock)

    clock = time.perf_counter()
    after = _top1(state, record, [Image.fromarray(a) for a in perturbed])
    per_image: dict[int, list[BudgetResult]] = {}
    for r, (i, eps) in enumerate(rows):
        linf = float(np.abs(perturbed[r].astype(np.int16) - pixels[i]).max())
        flipped = after[r].index != before[i].index
        per_image.setdefault(i, []).append(
            BudgetResult(epsilon=eps, after=after[r], flipped=flipped, linf=linf)
        )
    main = [r for r, (_, eps) in enumerate(rows) if eps == body.epsilon]
    adversarial_images = [perturbed[r] for r in main]
    pngs = [encode_png(a) for a in adversarial_images]
    timings["predict"] = _lap(clock)

    clock = time.perf_counter()
    cams, layer, provider = _gradcams(
        state, record, body, rgb, adversarial_images, before, after, main
    )
    timings["gradcam"] = _lap(clock)

    results = []
    for i, r in enumerate(main):
        budget = per_image[i][0]
        flips = sorted(b.epsilon for b in per_image[i] if b.flipped)
        result = AdversarialResult(
            image=i,
            before=before[i],
            after=after[r],
            flipped=budget.flipped,
            reached_target=None if aimed is None else after[r].index == aimed,
            linf=budget.linf,
            sweep=sorted(per_image[i], key=lambda b: b.epsilon) if body.sweep else None,
            smallest_flip=flips[0] if flips else None,
        )
        if "adversarial" in body.outputs:
            result.adversarial = to_base64(pngs[i])
        if "perturbation" in body.outputs:
            change = adversarial_images[i].astype(np.float64) - pixels[i]
            result.perturbation = to_base64(encode_png(amplified(change, body.epsilon)))
        if cams is not None:
            result.gradcam_before, result.gradcam_after, result.gradcam_similarity = cams[i]
        results.append(result)
    target = None
    if aimed is not None:
        scores, _ = runner.forward(preprocess(rgb[:1], spec))
        probs = probabilities(scores, card)
        target = Target(**vars(class_score(aimed, scores[0], probs[0], card)))
    return Attacked(target, step, layer, provider or runner.provider, results, timings, pngs)


def _gradcams(
    state: AppState,
    record: ModelRecord,
    body: AdversarialRequest,
    originals: list[Image.Image],
    perturbed: list[np.ndarray],
    before: list[Target],
    after: list[Target],
    main: list[int],
) -> tuple[list[tuple[str | None, str | None, MapSimilarity]] | None, str | None, str | None]:
    """Grad-CAM of the top-1 class before (on the original) and after (on the perturbed
    pixels), through the explain pipeline; overlays and the maps' similarity."""
    if "gradcam" not in body.outputs:
        return None, None, None
    n = len(originals)
    request = ExplainRequest(
        images=[PROBE_IMAGE] * (2 * n),
        method="gradcam",
        layer=body.layer,
        targets=[[t.index] for t in before] + [[after[r].index] for r in main],
        outputs=["overlay"],
    )
    done = explain(state, record, request, [*originals, *(Image.fromarray(a) for a in perturbed)])
    maps = [o.attribution for o in done.observations]
    out = []
    for i in range(n):
        similarity = MapSimilarity(**map_similarity(maps[i], maps[n + i], body.grid))
        out.append((done.results[i].overlay, done.results[n + i].overlay, similarity))
    return out, done.layers[0], done.provider


def _lap(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
