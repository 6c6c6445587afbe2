"""The per-result signals of an explanation as Prometheus histograms (docs/monitoring.md,
"Signals in Prometheus").

For every :class:`~service.monitoring.observation.Observation` the monitor's thread calls
:func:`observe_signals`, which observes, labelled ``model``, ``method``, ``class`` and
``source`` (request | sampled):

- ``cnnvis_signal_sparseness``: Gini index of ``|map|`` (:func:`signals.sparseness`);
- ``cnnvis_signal_top5_share``: share of the positive mass in the brightest 5%;
- ``cnnvis_signal_entropy``: entropy of the positive part (bits, as ``map_stats``) over
  ``log2(h * w)``, so 0 = one hot pixel and 1 = uniform;
- ``cnnvis_signal_region_share`` (+ ``region``): share of the positive mass in each of the
  *card's* regions, measured with the card's box; a region only a request named is not
  exported (clients must not mint series), nor a request's box for a card region's name;
- ``cnnvis_signal_probability``: the explained class's probability.

A signal that is undefined for a map (no positive mass) is not observed. Cardinality stays
bounded: ``model`` and ``method`` go through :meth:`Metrics.bounded`; ``class`` is the class
label (its index when the card has no labels) only when the card's ``monitoring.classes``
lists it, else ``-``; ``region`` comes from the card only.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from schemas.card import ModelCard
from service.imaging import signals
from service.metrics import NONE, Metrics
from service.monitoring.observation import Observation


def normalized_entropy(m: np.ndarray) -> float | None:
    """Entropy in bits of the positive part normalised to sum 1 (``map_stats``' ``entropy``,
    same formula) over ``log2(h * w)``; None without positive mass or for a one-pixel map."""
    p = signals.positive_part(m)
    total = float(p.sum())
    if p.size < 2 or total <= 0.0 or not math.isfinite(total):
        return None
    nz = p[p > 0] / total
    bits = max(0.0, float(-(nz * np.log2(nz)).sum()))
    return float(min(1.0, bits / math.log2(p.size)))


def allowed_classes(card: ModelCard | None) -> Collection[int | str]:
    monitoring = getattr(card, "monitoring", None)
    return getattr(monitoring, "classes", None) or ()


def class_label(obs: Observation, allowed: Collection[int | str]) -> str:
    """The ``class`` label value: the class's label (else its index) when ``allowed`` names it
    by label or index, else ``-``."""
    if not allowed:
        return NONE
    if obs.target in allowed or (obs.label is not None and obs.label in allowed):
        return obs.label if obs.label is not None else str(obs.target)
    return NONE


def observe_signals(
    metrics: Metrics | None,
    card: ModelCard | None,
    method: str,
    obs: Observation,
    source: str,
) -> None:
    """Observe one explained (image, class) on ``metrics``' signal histograms."""
    if metrics is None:
        return
    m = np.asarray(obs.attribution)
    labels = {
        "model": metrics.bounded("model", obs.model),
        "method": metrics.bounded("cnnvis_method", method),
        "class": class_label(obs, allowed_classes(card)),
        "source": source if source in ("request", "sampled") else NONE,
    }
    metrics.signal_sparseness.labels(**labels).observe(signals.sparseness(m))
    top = signals.top_share(m)
    if top is not None:
        metrics.signal_top5_share.labels(**labels).observe(top)
    entropy = normalized_entropy(m)
    if entropy is not None:
        metrics.signal_entropy.labels(**labels).observe(entropy)
    if math.isfinite(obs.probability):
        metrics.signal_probability.labels(**labels).observe(obs.probability)
    # the card's boxes, not the observation's: a request may name its own regions, and may
    # even redefine a card region's box; neither belongs in the card region's series
    card_regions = getattr(card, "regions", None) or {}
    watched = {name: signals.box_to_map(box, m.shape[:2]) for name, box in card_regions.items()}
    shares = signals.region_shares(m, watched) if watched and m.ndim == 2 else None
    for name, share in (shares or {}).items():
        metrics.signal_region_share.labels(**labels, region=name).observe(share)
