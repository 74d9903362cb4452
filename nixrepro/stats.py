"""Statistics for repeated runs: mean, sample standard deviation, standard error, Welch's t-test.

No scipy: the two-sided p-value of Student's t comes from the regularized incomplete beta function
(``P(|T| > t) = I_x(df/2, 1/2)`` with ``x = df / (df + t^2)``), evaluated by its continued fraction
(Numerical Recipes, 2nd ed., section 6.4), accurate to ~1e-10 here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05  # a difference with p >= ALPHA is reported as within noise
_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 300


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for n < 2
    sem: float | None  # std / sqrt(n)
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n=n, mean=mean, std=None, sem=None, min=min(values), max=max(values))
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    std = math.sqrt(variance)
    return Summary(n=n, mean=mean, std=std, sem=std / math.sqrt(n), min=min(values), max=max(values))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], not {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast on this side
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t >= 0 else tail


@dataclass(frozen=True)
class Welch:
    difference: float  # mean_b - mean_a
    t: float | None  # None when both groups have no spread (the p-value is then 0 or 1)
    df: float | None
    p_value: float


def welch(a: Summary, b: Summary) -> Welch | None:
    """Welch's unequal-variances t-test of mean(b) - mean(a); None unless both have n >= 2."""
    if a.std is None or b.std is None:
        return None
    difference = b.mean - a.mean
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # two groups without any spread: equal means or certainly different
        return Welch(difference=difference, t=None, df=None, p_value=1.0 if difference == 0 else 0.0)
    t = difference / se
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return Welch(difference=difference, t=t, df=df, p_value=t_two_sided_p(t, df))
