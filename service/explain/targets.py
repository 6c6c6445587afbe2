"""Rank targets: "the row's j-th best class", resolved by the method from its own run.

A target is a class index (>= 0) or a rank: ``rank_target(j)`` = -(j + 1), so ``TOP_CLASS``
(-1) is the best class, -2 the second best, and so on. A method registered with
``ranked=True`` accepts ranks and resolves them from the scores of the run it makes anyway
(the trunk forward, or the companion graph that seeds its own top class), so explaining
``top_k`` classes never costs a forward just to learn which classes they are.

Ranking is by score, stable (ties keep the lower index): the order of probabilities, since
softmax and sigmoid are monotonic, without their saturation ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.scores import ranked

TOP_CLASS = -1  # rank_target(0): seeded inside the companion graph (an all-zero seed row)


def rank_target(j: int) -> int:
    """The target meaning "the row's class of rank ``j``" (0 = the best)."""
    return -(int(j) + 1)


def has_ranks(targets: Sequence[int]) -> bool:
    return any(int(t) < 0 for t in targets)


def resolve_ranks(targets: Sequence[int], scores: np.ndarray) -> np.ndarray:
    """Class index per row: a class index stays, a rank is looked up in the row's scores."""
    index = np.asarray(targets, dtype=np.intp).copy()
    rows = np.flatnonzero(index < 0)
    if rows.size:
        depth = int(-index[rows].min())
        order = ranked(np.asarray(scores)[rows], depth)
        index[rows] = order[np.arange(rows.size), np.minimum(-index[rows] - 1, order.shape[1] - 1)]
    return index


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of ``x``, the distinct row of each row): rows equal to the row before
    share it. The pipeline expands an image to one row per target, side by side; runs whose
    result does not depend on the target (a forward, the trunk) need each image once."""
    x = np.asarray(x)
    first = [0]
    of_row = np.zeros(len(x), dtype=np.intp)
    for r in range(1, len(x)):
        if not np.array_equal(x[r], x[first[-1]]):
            first.append(r)
        of_row[r] = len(first) - 1
    return x[first], of_row
