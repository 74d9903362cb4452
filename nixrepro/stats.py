"""Statistics for repeated runs: mean, sample standard deviation, standard error, Welch's t-test.

No scipy: the two-sided p-value of Student's t comes from the regularized incomplete beta function
(``P(|T| > t) = I_x(df/2, 1/2)`` with ``x = df / (df + t^2)``), evaluated by its continued fraction
(Numerical Recipes, 2nd ed., section 6.4), accurate to ~1e-10 here.

Any finite 64-bit floats are summarized without overflow: values are scaled by a power of two
(exactly) before they are summed or squared, so 1e300s and 1e-300s give the same digits as the
textbook formulas on small numbers. A statistic whose true value is beyond a 64-bit float (the
standard deviation of -1.7e308 and 1.7e308) is ``None``, never ``inf``.
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
    """n, mean, sample standard deviation and SEM of finite values."""
    if not values:
        raise ValueError("no values to summarize")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("summarize takes finite values only")
    n = len(values)
    exponent = _exponent(max(abs(v) for v in values))
    scaled = [math.ldexp(v, -exponent) for v in values]  # |scaled| < 1: sums and squares fit
    mean_scaled = math.fsum(scaled) / n
    mean = math.ldexp(mean_scaled, exponent)  # |mean| <= max |value|: always fits
    if n < 2:
        return Summary(n=n, mean=mean, std=None, sem=None, min=min(values), max=max(values))
    std_scaled = math.sqrt(math.fsum((v - mean_scaled) ** 2 for v in scaled) / (n - 1))
    return Summary(n=n, mean=mean, std=_unscaled(std_scaled, exponent),
                   sem=_unscaled(std_scaled / math.sqrt(n), exponent), min=min(values), max=max(values))


def _exponent(magnitude: float) -> int:
    """e with magnitude < 2**e (0 for 0): dividing by 2**e is exact and brings it below 1."""
    return math.frexp(magnitude)[1]


def _unscaled(value: float, exponent: int) -> float | None:
    """value * 2**exponent, or None where that is beyond a 64-bit float."""
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return None


def _ldexp(value: float, exponent: int) -> float:
    """value * 2**exponent, saturating to +-inf instead of raising."""
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)


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
    difference: float  # mean_b - mean_a (+-inf when that is beyond a 64-bit float)
    t: float | None  # None when both groups have no spread (the p-value is then 0 or 1)
    df: float | None
    p_value: float


def welch(a: Summary, b: Summary) -> Welch | None:
    """Welch's unequal-variances t-test of mean(b) - mean(a); None unless both have n >= 2 and a
    standard deviation that fits a 64-bit float.

    Computed in units of the larger standard deviation (a power of two, so exactly): the
    variances of 1e200s neither overflow nor do those of 1e-200s vanish to a false "no spread".
    """
    if a.std is None or b.std is None or a.n < 2 or b.n < 2:
        return None
    difference = b.mean - a.mean
    spread = max(a.std, b.std)
    if spread == 0.0:  # two groups without any spread: equal means or certainly different
        return Welch(difference=difference, t=None, df=None, p_value=1.0 if a.mean == b.mean else 0.0)
    exponent = _exponent(spread)
    sa, sb = math.ldexp(a.std, -exponent), math.ldexp(b.std, -exponent)  # the larger in [0.5, 1)
    va, vb = sa * sa / a.n, sb * sb / b.n
    # halves first: b.mean - a.mean itself can overflow when the means are near +-1.8e308
    difference_scaled = _ldexp(b.mean / 2 - a.mean / 2, 1 - exponent)
    t = difference_scaled / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return Welch(difference=difference, t=t, df=df, p_value=t_two_sided_p(t, df))
