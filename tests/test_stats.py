"""Statistics without scipy: the Student t distribution against printed tables and closed forms,
Welch's test against a worked example, and the group comparison ``diff GROUP_A GROUP_B`` prints."""

from __future__ import annotations

import math
import statistics

import pytest

from nixrepro.closure import StorePathInfo
from nixrepro.groups import compare_groups, comparison_json, comparison_text
from nixrepro.host import HostInfo
from nixrepro.record import CodeState, Command, Environment, Recorder, RunRecord
from nixrepro.stats import regularized_incomplete_beta, summarize, t_cdf, t_two_sided_p, welch

# Two-sided critical values of Student's t (any statistics table, e.g. NIST/SEMATECH e-Handbook
# 1.3.6.7.2): P(|T| > t) = alpha at these (df, t).
TABLE = [
    (1, 0.05, 12.706), (2, 0.05, 4.303), (5, 0.05, 2.571), (10, 0.05, 2.228), (30, 0.05, 2.042),
    (100, 0.05, 1.984), (5, 0.10, 2.015), (10, 0.01, 3.169), (20, 0.01, 2.845), (3, 0.001, 12.924),
]


@pytest.mark.parametrize(("df", "alpha", "t"), TABLE)
def test_two_sided_p_matches_the_t_table(df: int, alpha: float, t: float) -> None:
    # the table rounds t to 3 decimals, which moves p by well under 1% of alpha
    assert t_two_sided_p(t, df) == pytest.approx(alpha, rel=0.01)
    assert t_two_sided_p(-t, df) == pytest.approx(alpha, rel=0.01)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 7.0, 40.0])
def test_closed_forms_for_one_and_two_degrees_of_freedom(t: float) -> None:
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(-t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_large_df_tends_to_the_normal_distribution() -> None:
    normal_two_sided = math.erfc(1.959964 / math.sqrt(2))
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(normal_two_sided, rel=1e-5)


def test_incomplete_beta_edges_and_symmetry() -> None:
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0
    assert regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0
    # I_x(a, b) = 1 - I_{1-x}(b, a); I_x(1, 1) = x; I_x(a, 1) = x^a
    assert regularized_incomplete_beta(2.5, 0.5, 0.3) == pytest.approx(
        1 - regularized_incomplete_beta(0.5, 2.5, 0.7), abs=1e-12)
    assert regularized_incomplete_beta(1.0, 1.0, 0.42) == pytest.approx(0.42, abs=1e-12)
    assert regularized_incomplete_beta(3.0, 1.0, 0.5) == pytest.approx(0.125, abs=1e-12)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(1.0, 1.0, 1.5)


def test_summary_is_the_sample_statistics() -> None:
    values = [0.31, 0.29, 0.35, 0.30, 0.33]
    s = summarize(values)
    assert s.n == 5
    assert s.mean == pytest.approx(statistics.fmean(values))
    assert s.std == pytest.approx(statistics.stdev(values))
    assert s.sem == pytest.approx(statistics.stdev(values) / math.sqrt(5))
    one = summarize([2.0])
    assert (one.mean, one.std, one.sem) == (2.0, None, None)


def test_welch_on_a_worked_example() -> None:
    # a = 1..5, b = 2,4,..,10: means 3 and 6, variances 2.5 and 10, so
    # se = sqrt(2.5/5 + 10/5) = sqrt(2.5), t = 3 / sqrt(2.5), df = 2.5^2 / (0.5^2/4 + 2^2/4)
    a, b = summarize([1, 2, 3, 4, 5]), summarize([2, 4, 6, 8, 10])
    result = welch(a, b)
    assert result is not None and result.t is not None and result.df is not None
    assert result.difference == 3.0
    assert result.t == pytest.approx(3 / math.sqrt(2.5))
    assert result.df == pytest.approx(6.25 / (0.0625 + 1.0))
    assert result.p_value == pytest.approx(t_two_sided_p(3 / math.sqrt(2.5), 6.25 / 1.0625))
    assert 0.10 < result.p_value < 0.11  # between the table's 0.10 (1.943) and 0.20 points, df 6
    assert welch(summarize([1.0]), b) is None  # one run has no spread to test against


def _record(run_id: str, metrics: dict[str, float], status: str = "succeeded") -> RunRecord:
    return RunRecord(
        id=run_id, status=status, dev=False, started_at="2026-01-01T00:00:00+00:00",  # type: ignore[arg-type]
        command=Command(argv=["python", "train.py"], cwd="/x"),
        code=CodeState(commit="c" * 40, branch="main", remote=None, dirty=False),
        environment=Environment(flake_lock_sha256=None, inputs={}, env_path="/nix/store/x",
                                system="x86_64-linux", nix_version="2.8.0", closure_hash="h",
                                closure=[StorePathInfo("/nix/store/x", "sha256-x", 1)]),
        host=HostInfo(os="Linux", kernel="6", arch="x86_64", cpu="cpu", cpu_count=2, memory_bytes=1),
        recorder=Recorder(version="0", pid=1, hostname="h"),
        metrics=metrics,  # type: ignore[arg-type]
    )


def test_compare_groups_says_when_a_difference_is_within_noise() -> None:
    a = [_record(f"a{i}", {"loss": v, "acc": w}) for i, (v, w) in
         enumerate([(0.30, 0.90), (0.32, 0.91), (0.31, 0.89), (0.33, 0.90)])]
    b = [_record(f"b{i}", {"loss": v, "acc": w, "f1": 0.5}) for i, (v, w) in
         enumerate([(0.31, 0.95), (0.33, 0.96), (0.30, 0.95), (0.32, 0.97)])]
    b.append(_record("b9", {"loss": 99.0}, status="failed"))  # failed runs do not count
    comparison = compare_groups(a, b)
    by_name = {m.name: m for m in comparison.metrics}
    assert by_name["loss"].within_noise is True
    assert by_name["acc"].within_noise is False
    assert by_name["loss"].b.n == 4
    assert comparison.only_b == ["f1"]
    text = comparison_text(comparison, "g1", "g2").splitlines()
    assert text[0].split() == ["METRIC", "g1", "g2", "B", "-", "A", "WELCH'S", "T-TEST"]
    assert text[1].startswith("acc ") and "differs (p=" in text[1]
    assert text[2].startswith("loss") and "within noise (p=" in text[2]
    assert "0.315 ± 0.0065 (n=4)" in text[2]
    assert text[3] == "only in g2: f1"
    doc = comparison_json(comparison)
    assert doc["metrics"]["loss"]["within_noise"] is True
    assert doc["metrics"]["acc"]["a"]["mean"] == pytest.approx(0.9)
    assert doc["metrics"]["acc"]["p_value"] < 0.05


def test_summary_of_floats_near_the_limits_neither_overflows_nor_underflows() -> None:
    huge = summarize([1.7e308, 1.7e308, 1.6e308])  # the textbook sum overflows to inf
    assert huge.mean == pytest.approx(1.7e308 / 3 * 2 + 1.6e308 / 3)
    assert huge.std == pytest.approx(5.7735e306, rel=1e-4)
    tiny = summarize([1e-300, 2e-300, 3e-300])  # squares of the spread underflow to 0
    assert tiny.mean == pytest.approx(2e-300) and tiny.std == pytest.approx(1e-300)
    wide = summarize([-1.7e308, 1.7e308])
    assert wide.mean == 0.0 and wide.std is None  # sqrt(2) * 1.7e308 fits no float
    assert wide.sem == pytest.approx(1.7e308)


def test_welch_at_the_limits_of_a_float_gives_the_scale_free_answer() -> None:
    small = welch(summarize([1, 2, 3]), summarize([2, 3, 4]))
    assert small is not None
    for scale in (1e200, 1e-200):
        scaled = welch(summarize([scale, 2 * scale, 3 * scale]), summarize([2 * scale, 3 * scale, 4 * scale]))
        assert scaled is not None and scaled.t is not None
        assert scaled.t == pytest.approx(small.t) and scaled.p_value == pytest.approx(small.p_value)
    apart = welch(summarize([1.7e308, 1.6e308]), summarize([-1.7e308, -1.6e308]))
    assert apart is not None and apart.difference == -math.inf and apart.p_value < 0.001
