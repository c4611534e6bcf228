"""The data-filtering scaling law: against a literal reading of the formula, its limits,
the pool it picks as compute grows, and fitting it back from pilot runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from gristmill.cli import app
from gristmill.scoring import scaling_laws as law

PUBLISHED = law.preset("datacomp_medium")
S = law.DATACOMP_MEDIUM_BUCKET_SAMPLES


def literal_error(params: law.LawParams, k: int, n: float, size: float) -> float:
    """y(N) for the top-k pool, term by term as METHODS.md writes it (a loop, no tricks)."""
    pool_size = k * size

    def b_j(j: int) -> float:
        return sum(params.b[i] * 0.5 ** (j / (k * params.tau[i])) for i in range(k)) / k

    epochs = math.floor(n / pool_size)
    n0 = params.a * min(pool_size, n) / 1e5
    y = n0 ** b_j(0) + params.d
    for j in range(1, epochs + 1):
        nj = params.a * min(pool_size * (j + 1), n) / 1e5
        mj = params.a * pool_size * j / 1e5
        y *= (nj / mj) ** b_j(j)
    return y


@pytest.mark.parametrize("k", [1, 2, 4])
def test_vectorized_law_matches_the_formula_term_by_term(k: int) -> None:
    budgets = np.array([5e6, S * k * 0.5, S * k, S * k * 3, S * k * 3.7, 640e6, 3e9])
    got = law.pool_error(PUBLISHED, k, budgets, S)
    want = [literal_error(PUBLISHED, k, n, S) for n in budgets]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_below_one_epoch_the_product_is_empty_and_the_law_is_a_power_law() -> None:
    params = PUBLISHED.model_copy(update={"d": 0.0})
    budgets = np.geomspace(5e6, S * 0.99, 20)
    y = law.pool_error(params, 1, budgets, S)
    np.testing.assert_allclose(y, (params.a * budgets / 1e5) ** params.b[0], rtol=1e-12)
    slope = np.diff(np.log(y)) / np.diff(np.log(budgets))
    np.testing.assert_allclose(slope, params.b[0], rtol=1e-9)
    # and every pool agrees on the one-epoch law of its own mean exponent
    for k in range(1, 5):
        np.testing.assert_allclose(law.pool_error(params, k, budgets[:3], S),
                                   (params.a * budgets[:3] / 1e5) ** np.mean(params.b[:k]))


def test_with_one_pool_each_repetition_returns_less_halving_every_tau_epochs() -> None:
    params = law.LawParams(a=0.025, d=0.0, b=[-0.2], tau=[3.0])
    epochs = np.arange(1, 16)
    y = law.pool_error(params, 1, epochs * S, S)
    # from j to j+1 epochs (repetition j) the log-log slope is the decayed b * 0.5**(j / tau)
    slopes = np.diff(np.log(y)) / np.diff(np.log(epochs * S))
    np.testing.assert_allclose(slopes, -0.2 * 0.5 ** (epochs[:-1] / 3.0), rtol=1e-9)
    gains = -np.diff(np.log(y))
    assert np.all(np.diff(gains) < 0), "every repetition must help less than the one before"
    fresh = (params.a * epochs[1:] * S / 1e5) ** -0.2
    assert np.all(y[1:] > fresh), "repeated data must be worth less than fresh data"


def test_the_law_is_continuous_across_epoch_boundaries() -> None:
    for k in (1, 3):
        for epoch in (1, 2, 7):
            edge = epoch * k * S
            below, at, above = law.pool_error(PUBLISHED, k, [edge * (1 - 1e-12), edge,
                                                              edge * (1 + 1e-12)], S)
            assert below == pytest.approx(at, rel=1e-9) == pytest.approx(above, rel=1e-9)


def test_the_chosen_pool_never_shrinks_as_the_budget_grows() -> None:
    budgets = np.geomspace(1e5 / PUBLISHED.a, 1e12, 3000)
    for variant in ("repetition", "effective"):
        chosen = law.best_pool(PUBLISHED, budgets, S, variant)
        assert np.all(np.diff(chosen) >= 0), variant
        assert chosen[0] == 1 and chosen[-1] > 1, "small budgets: best bucket; large: more"


def test_more_pools_help_only_with_repetition() -> None:
    below_one_epoch = law.best_pool(PUBLISHED, np.geomspace(4.1e6, S, 50), S)
    assert set(below_one_epoch.tolist()) == {1}


def test_a_single_bucket_is_always_chosen_alone() -> None:
    one = law.LawParams(a=0.025, d=0.1, b=[-0.16], tau=[6.73])
    budgets = np.geomspace(5e6, 1e10, 40)
    assert law.error_table(one, budgets, S).shape == (1, 40)
    assert set(law.best_pool(one, budgets, S).tolist()) == {1}


def test_budgets_below_the_calibrated_range_are_refused() -> None:
    with pytest.raises(law.ScalingLawError, match="calibrated from 4,000,000 samples"):
        law.best_pool(PUBLISHED, [1e6], S)
    with pytest.raises(law.ScalingLawError, match="bucket too small"):
        law.best_pool(PUBLISHED, [1e9], 600)
    tiny = law.rescaled(PUBLISHED, 600)
    assert law.best_pool(tiny, [600 * 10], 600)[0] == law.best_pool(PUBLISHED, [S * 10], S)[0]


def test_effective_samples_discount_repeats_by_their_half_life() -> None:
    pool = law.bucket_pool(law.LawParams(a=0.025, d=0.1, b=[-0.16], tau=[2.0]), 0, S)
    np.testing.assert_allclose(law.effective_samples(pool, [0.5 * S, S]), [0.5 * S, S])
    # epoch 2 counts half (tau = 2 epochs -> 0.5**(1/2)... per repetition j: 0.5**(j/2))
    np.testing.assert_allclose(law.effective_samples(pool, [3 * S]),
                               S * (1 + 0.5 ** 0.5 + 0.5 ** 1.0))
    forever = law.effective_samples(pool, [1e6 * S])[0]
    assert forever == pytest.approx(S / (1 - 0.5 ** 0.5), rel=1e-9), "a geometric series"


def pilot_runs(params: law.LawParams, noise: float, seed: int = 0) -> law.PilotTable:
    rng = np.random.default_rng(seed)
    buckets, samples, errors = [], [], []
    for bucket in range(params.buckets):
        budgets = np.geomspace(5e6, 20 * S, 12)
        y = law.repetition_error(law.bucket_pool(params, bucket, S), budgets, params.a,
                                 params.d)
        buckets += [bucket] * budgets.size
        samples += budgets.tolist()
        errors += (y * (1 + noise * rng.standard_normal(budgets.size))).tolist()
    return law.PilotTable.of(buckets, samples, errors, tolerance=5 * noise)


@pytest.mark.parametrize("fixed_d", [True, False])
def test_fitting_recovers_the_parameters_that_generated_noisy_pilots(fixed_d: bool) -> None:
    truth = law.LawParams(a=0.03, d=0.1, b=[-0.18, -0.12, -0.09], tau=[5.0, 8.0, 3.0])
    fit = law.fit_law(pilot_runs(truth, noise=0.002), S, d=0.1 if fixed_d else None)
    assert fit.d_fixed is fixed_d
    assert fit.params.a == pytest.approx(truth.a, rel=0.1)
    np.testing.assert_allclose(fit.params.b, truth.b, rtol=0.05)
    np.testing.assert_allclose(fit.params.tau, truth.tau, rtol=0.2)
    assert fit.params.d == pytest.approx(0.1, abs=0.01)
    assert fit.rmse < 0.01
    budgets = np.geomspace(5e6, 5e9, 60)
    np.testing.assert_array_equal(law.best_pool(fit.params, budgets, S),
                                  law.best_pool(truth, budgets, S))


def test_a_non_monotone_pilot_table_is_refused_with_the_offending_runs() -> None:
    with pytest.raises(law.ScalingLawError, match=r"bucket 1 error rises from 0\.7 .* to 0\.8"):
        law.PilotTable.of([0, 0, 1, 1], [1e7, 2e7, 1e7, 2e7], [0.8, 0.7, 0.7, 0.8])
    ok = law.PilotTable.of([1, 1], [1e7, 2e7], [0.70, 0.705], tolerance=0.01)
    assert ok.error.size == 2


@pytest.mark.parametrize(("buckets", "samples", "errors", "message"), [
    ([0, 0], [1e7, 2e7], [0.8, float("nan")], "error must be positive and finite"),
    ([0, 0], [1e7, -1.0], [0.8, 0.7], "samples must be positive"),
    ([0, -1], [1e7, 2e7], [0.8, 0.7], "integers >= 0"),
    ([], [], [], "non-empty"),
])
def test_bad_pilot_tables_are_refused(buckets: list, samples: list, errors: list,
                                      message: str) -> None:
    with pytest.raises(law.ScalingLawError, match=message):
        law.PilotTable.of(np.array(buckets, dtype=int), samples, errors)


def test_a_fit_needs_runs_past_one_epoch_for_every_bucket() -> None:
    table = law.PilotTable.of([0, 0, 0, 0, 0], [1e6 * s for s in (5, 6, 8, 10, 12)],
                              [0.9, 0.88, 0.86, 0.85, 0.84])
    with pytest.raises(law.ScalingLawError, match="past one epoch"):
        law.fit_law(table, S)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        law.LawParams(a=0.025, d=0.1, b=[0.1], tau=[1.0])
    with pytest.raises(ValueError, match="one of each per bucket"):
        law.LawParams(a=0.025, d=0.1, b=[-0.1, -0.2], tau=[1.0])
    with pytest.raises(law.ScalingLawError, match="unknown scaling-law preset"):
        law.preset("nope")
    with pytest.raises(law.ScalingLawError, match="positive and finite"):
        law.pool_error(PUBLISHED, 1, [float("nan")], S)


def test_quality_filter_plan_prints_the_choice_per_budget_and_fits_pilot_csvs(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["quality-filter-plan", "-b", "32M", "-b", "2B"])
    assert result.exit_code == 0, result.output
    picks = law.best_pool(PUBLISHED, [32e6, 2e9], S)
    for row, k in zip(("32M", "2B"), picks, strict=True):
        line = next(line for line in result.output.splitlines() if f" {row} " in line)
        assert f"top {10 * k}%" in line
    pilots = pilot_runs(PUBLISHED, noise=0.0)
    csv = tmp_path / "pilots.csv"
    csv.write_text("bucket,samples_seen,error\n" + "\n".join(
        f"{b},{n},{e}" for b, n, e in zip(pilots.bucket, pilots.samples, pilots.error,
                                          strict=True)))
    fitted = runner.invoke(app, ["quality-filter-plan", "--pilots", str(csv), "-b", "640M"])
    assert fitted.exit_code == 0, fitted.output
    assert "fit to" in fitted.output and "640M" in fitted.output
    csv.write_text("bucket,samples_seen,error\n0,1e7,0.7\n0,2e7,0.9\n")
    refused = runner.invoke(app, ["quality-filter-plan", "--pilots", str(csv)])
    assert refused.exit_code == 1 and "not monotone" in refused.output
