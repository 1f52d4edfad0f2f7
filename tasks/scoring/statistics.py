"""Uncertainty of evaluation figures (scipy.stats): a Wilson interval for a proportion, a bootstrap
interval for a mean, and for two models on the same questions a paired-bootstrap interval of the
difference with a paired permutation test (swapping the two models' results per question).

A bare difference of two accuracies on 200 questions moves by several points between runs; these
say how much of it is noise. Resampling is seeded, so the same results give the same intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval (None where too few observations give one) and how it was made."""

    value: float
    low: float | None
    high: float | None
    n: int
    method: str  # "wilson" | "bootstrap"


@dataclass(frozen=True)
class PairedDifference:
    """mean(b − a) over the questions both models answered, its paired-bootstrap interval and p-value."""

    difference: float
    low: float | None
    high: float | None
    p_value: float | None
    n: int

    @property
    def significant(self) -> bool:
        """Whether both say so at the 95% level: the interval excludes 0 and p < 0.05 (with few discordant
        questions the percentile interval can exclude 0 while the exact test does not reject)."""
        excludes = self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)
        return excludes and self.p_value is not None and self.p_value < 1 - CONFIDENCE


def proportion(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """successes/n with its Wilson score interval."""
    from scipy.stats import binomtest

    if n <= 0:
        return Estimate(math.nan, None, None, 0, "wilson")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(interval.low), float(interval.high), n, "wilson")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def mean(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """The mean with its percentile bootstrap interval (none below two values)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(math.nan, None, None, 0, "bootstrap")
    if data.size < 2:
        return Estimate(float(data.mean()), None, None, 1, "bootstrap")
    result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                       rng=_rng(seed))  # fmt: skip
    interval = result.confidence_interval
    return Estimate(float(data.mean()), float(interval.low), float(interval.high), int(data.size), "bootstrap")


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b - a, axis=axis)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> PairedDifference:
    """mean(b − a) over paired observations (the same questions), with a paired-bootstrap interval and the
    two-sided p-value of a paired permutation test (exact when 2^n ≤ resamples)."""
    from scipy.stats import bootstrap, permutation_test

    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in length: {first.size} and {second.size}")
    if first.size == 0:
        return PairedDifference(math.nan, None, None, None, 0)
    difference = float(np.mean(second - first))
    if first.size < 2:
        return PairedDifference(difference, None, None, None, 1)
    interval = bootstrap((first, second), _mean_difference, paired=True, vectorized=True, confidence_level=confidence,
                         n_resamples=resamples, method="percentile", rng=_rng(seed)).confidence_interval  # fmt: skip
    test = permutation_test((first, second), _mean_difference, permutation_type="samples", vectorized=True,
                            n_resamples=resamples, alternative="two-sided", rng=_rng(seed))  # fmt: skip
    low, high = float(interval.low), float(interval.high)
    return PairedDifference(difference, low, high, min(1.0, float(test.pvalue)), int(first.size))
