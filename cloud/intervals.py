"""95 % intervals for the accuracies the quality and evaluate commands report.

Wilson's score interval rather than ``p ± z·se``: it stays inside [0, 1] and keeps its coverage
for the small n and the accuracies near 1 that labelled samples give. The difference of two
models on the same samples is paired: its interval uses the per-sample differences (one is
right where the other is wrong), far narrower than two independent intervals would suggest.
"""

from __future__ import annotations

import math
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of ``correct / n``; ``None`` when ``n`` is 0."""
    if n == 0:
        return None
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(
    only_first: int, only_second: int, n: int, z: float = Z95
) -> tuple[float, tuple[float, float]] | None:
    """Accuracy of the first minus the second on the same ``n`` samples, from the discordant
    counts (right only by the first, right only by the second), with the normal interval of
    the mean per-sample difference (+1, 0 or -1): ``se = sqrt((b + c) - (b - c)^2 / n) / n``."""
    if n == 0:
        return None
    b, c = only_first, only_second
    difference = (b - c) / n
    half = z * math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / n)) / n
    return difference, (max(-1.0, difference - half), min(1.0, difference + half))


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs as a binomial(b + c, 1/2)."""
    m, k = only_first + only_second, min(only_first, only_second)
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)
