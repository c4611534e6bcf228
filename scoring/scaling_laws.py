"""Scaling laws for data filtering (Goyal et al., 2024): which quality pool to train on.

A pool of S samples per epoch, seen N times in total (E = floor(N/S) full epochs), has

    y(N) = (n_0**b_0 + d) * prod_{j=1..E} (n_j / m_j)**b_j
    n_j = a * min(S*(j+1), N) / 1e5,   m_j = a * S * j / 1e5,   b_j = b * 0.5**(j / tau)

The first factor is the one-epoch power law; every repetition j multiplies the error by the
growth of samples seen in that epoch raised to an exponent that halves every `tau` epochs,
so repeated data helps less and less. Below one epoch (N < S) the product is empty. The
ratio n_j/m_j does not depend on `a`, and at N = E*S the last factor is 1, so the law is
continuous in N whichever side of an epoch boundary floor() lands on.

The top k buckets pooled together have k*S samples per epoch (the buckets' own sizes summed
here, which is k*S when they are equal), exponent b_j = mean_i b_i * 0.5**(j / (k*tau_i)),
and the shared a and d. `best_pool` picks the k with the lowest predicted error: with more
compute, repeating a small clean pool costs more than adding lower-quality data, so the
chosen pool grows with the budget. Pure numpy/scipy, vectorized over budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SAMPLE_SCALE = 1e5
"""Samples are counted in units of 1e5 inside the power law (the paper's normalization)."""

HALF_LIVES_KEPT = 64
"""Repetitions past this many half-lives change log y by under |b| * 2**-64: dropped."""

DATACOMP_MEDIUM_BUCKET_SAMPLES = 12_800_000
"""Samples per bucket in the published fit: 10% of DataComp medium's 128M pool."""

Variant = Literal["repetition", "effective"]


class ScalingLawError(ValueError):
    """Parameters, budgets or pilot runs that the law cannot be evaluated or fitted on."""


class LawParams(BaseModel):
    """The law's parameters: shared `a`, `d`; one `b` (< 0) and half-life `tau` per bucket,
    best bucket first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    a: float = Field(gt=0, description="Scale of samples seen inside the power law")
    d: float = Field(ge=0, description="Irreducible error added to the one-epoch term")
    b: list[float] = Field(min_length=1, description="Power-law exponent per bucket (< 0)")
    tau: list[float] = Field(min_length=1, description="Half-life of b in epochs, per bucket")

    @model_validator(mode="after")
    def _one_b_and_tau_per_bucket(self) -> LawParams:
        if len(self.b) != len(self.tau):
            raise ValueError(f"b has {len(self.b)} values and tau {len(self.tau)}: "
                             "give one of each per bucket")
        if any(not np.isfinite(v) or v >= 0 for v in self.b):
            raise ValueError(f"every b must be negative (more data, less error): {self.b}")
        if any(not np.isfinite(v) or v <= 0 for v in self.tau):
            raise ValueError(f"every tau must be positive: {self.tau}")
        return self

    @property
    def buckets(self) -> int:
        return len(self.b)


PRESETS: dict[str, LawParams] = {
    "datacomp_medium": LawParams(a=0.025, d=0.1, b=[-0.16, -0.125, -0.10, -0.085],
                                 tau=[6.73, 8.55, 5.27, 2.27]),
}
"""Published fits, by name. datacomp_medium: Goyal et al. (2024), 12.8M samples per bucket."""


def preset(name: str) -> LawParams:
    if name not in PRESETS:
        raise ScalingLawError(f"unknown scaling-law preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Pool:
    """One candidate training pool: its samples per epoch and the exponents of its buckets,
    with half-lives already stretched by the number of buckets pooled."""

    samples_per_epoch: float
    b: np.ndarray
    tau: np.ndarray

    def exponent(self, j: np.ndarray) -> np.ndarray:
        """b_j for repetition j (0 = first epoch): the members' decayed exponents, averaged."""
        j = np.asarray(j, dtype=np.float64)
        return np.mean(self.b[:, None] * 0.5 ** (j[None, :] / self.tau[:, None]), axis=0)

    @property
    def repetitions_kept(self) -> int:
        return int(np.ceil(HALF_LIVES_KEPT * float(self.tau.max())))


def top_pool(params: LawParams, k: int, bucket_samples: Sequence[float] | float) -> Pool:
    """The pool of the best k buckets. `bucket_samples` is one size for every bucket or one
    size per bucket (samples, or tokens when the budget is in tokens)."""
    if not 1 <= k <= params.buckets:
        raise ScalingLawError(f"pool size k={k} outside 1..{params.buckets} buckets")
    sizes = _bucket_sizes(bucket_samples, params.buckets)
    return Pool(samples_per_epoch=float(sizes[:k].sum()), b=np.asarray(params.b[:k], float),
                tau=k * np.asarray(params.tau[:k], float))


def bucket_pool(params: LawParams, bucket: int, samples: float) -> Pool:
    """Bucket `bucket` alone (what a pilot run trains on)."""
    if not 0 <= bucket < params.buckets:
        raise ScalingLawError(f"bucket {bucket} outside 0..{params.buckets - 1}")
    return Pool(samples_per_epoch=float(samples), b=np.array([params.b[bucket]], float),
                tau=np.array([params.tau[bucket]], float))


def _bucket_sizes(bucket_samples: Sequence[float] | float, buckets: int) -> np.ndarray:
    sizes = np.broadcast_to(np.asarray(bucket_samples, dtype=np.float64), (buckets,)) \
        if np.ndim(bucket_samples) == 0 else np.asarray(bucket_samples, dtype=np.float64)
    if sizes.shape != (buckets,):
        raise ScalingLawError(f"need {buckets} bucket sizes, got {sizes.size}")
    if np.any(~np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ScalingLawError(f"bucket sizes must be positive and finite: {sizes.tolist()} "
                              "(an empty bucket cannot be trained on)")
    return sizes


def _budgets(budgets: Sequence[float] | float | np.ndarray) -> np.ndarray:
    array = np.atleast_1d(np.asarray(budgets, dtype=np.float64))
    if array.ndim != 1 or np.any(~np.isfinite(array)) or np.any(array <= 0):
        raise ScalingLawError(f"budgets (samples seen) must be positive and finite: {budgets}")
    return array


def _epochs(pool: Pool, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E, repetitions to evaluate): full epochs, capped where the exponent has vanished."""
    epochs = np.floor(budgets / pool.samples_per_epoch).astype(np.int64)
    return epochs, np.minimum(epochs, pool.repetitions_kept)


def repetition_error(pool: Pool, budgets: Sequence[float] | float | np.ndarray, a: float,
                     d: float) -> np.ndarray:
    """y(N) for every budget N: the one-epoch law times one decaying factor per repetition.

    For 1 <= j < E the factor is ((j+1)/j)**b_j; only the last, partial epoch uses N itself,
    so the sum over repetitions is one cumulative array indexed per budget.
    """
    n = _budgets(budgets)
    size = pool.samples_per_epoch
    first = (a * np.minimum(size, n) / SAMPLE_SCALE) ** pool.exponent(np.array([0.0]))[0] + d
    epochs, kept = _epochs(pool, n)
    top = int(kept.max()) if kept.size else 0
    j = np.arange(1, top + 1, dtype=np.float64)
    exponents = pool.exponent(j) if top else np.zeros(0)
    cumulative = np.concatenate([[0.0], np.cumsum(exponents * np.log1p(1.0 / j))])
    # full repetitions 1..kept-1, then the last one up to N (or a full one when capped)
    full = cumulative[np.maximum(kept - 1, 0)]
    last_j = np.maximum(kept, 1)
    last_ratio = np.where(epochs > kept, (last_j + 1.0) / last_j,
                          n / (size * last_j))
    last_b = np.concatenate([[0.0], exponents])[kept]
    log_product = np.where(kept >= 1, full + last_b * np.log(last_ratio), 0.0)
    return first * np.exp(log_product)


def effective_samples(pool: Pool, budgets: Sequence[float] | float | np.ndarray) -> np.ndarray:
    """Samples seen, with repeats discounted: the effective-data view of repetition.

    A sample seen for the (j+1)-th time (repetition j) counts as w_j = b_j / b_0 of a fresh
    one, i.e. 0.5**(j/tau) for a single bucket: its worth halves every `tau` epochs, the
    same decay the repetition law puts on the exponent. N_eff = sum_j w_j * (samples seen
    in epoch j), so N_eff = N below one epoch and N_eff < N after.
    """
    n = _budgets(budgets)
    size = pool.samples_per_epoch
    epochs, kept = _epochs(pool, n)
    top = int(kept.max()) if kept.size else 0
    weights = pool.exponent(np.arange(0, top + 1, dtype=np.float64)) / pool.exponent(
        np.array([0.0]))[0]
    full_epochs = np.concatenate([[0.0], np.cumsum(weights)])[kept] * size
    partial = np.where(epochs > kept, 0.0, weights[kept] * (n - kept * size))
    return full_epochs + partial


def effective_error(pool: Pool, budgets: Sequence[float] | float | np.ndarray, a: float,
                    d: float) -> np.ndarray:
    """The effective-data variant: the one-epoch law at N_eff instead of N,
    y = (a * N_eff / 1e5)**b_0 + d."""
    b0 = pool.exponent(np.array([0.0]))[0]
    return (a * effective_samples(pool, budgets) / SAMPLE_SCALE) ** b0 + d


def pool_error(params: LawParams, k: int, budgets: Sequence[float] | float | np.ndarray,
               bucket_samples: Sequence[float] | float,
               variant: Variant = "repetition") -> np.ndarray:
    """Predicted error of training on the top-k pool for each budget."""
    pool = top_pool(params, k, bucket_samples)
    law = repetition_error if variant == "repetition" else effective_error
    return law(pool, budgets, params.a, params.d)


def error_table(params: LawParams, budgets: Sequence[float] | float | np.ndarray,
                bucket_samples: Sequence[float] | float,
                variant: Variant = "repetition") -> np.ndarray:
    """(buckets, budgets) predicted errors: row k-1 is the top-k pool."""
    return np.stack([pool_error(params, k, budgets, bucket_samples, variant)
                     for k in range(1, params.buckets + 1)])


def check_in_range(params: LawParams, budgets: Sequence[float] | float | np.ndarray,
                   bucket_samples: Sequence[float] | float) -> None:
    """Refuse budgets where the first-epoch term a*min(S, N)/1e5 of some pool is below 1.

    There n_0**b exceeds 1 and grows as b gets more negative, so the law would rank the
    worst pool first: the fit says nothing about that scale.
    """
    n = _budgets(budgets)
    smallest = float(_bucket_sizes(bucket_samples, params.buckets)[0])
    floor = SAMPLE_SCALE / params.a
    low = np.minimum(n, smallest) < floor
    if np.any(low):
        what = "bucket" if smallest < floor else "budget"
        raise ScalingLawError(
            f"{what} too small for these parameters: a * min(S, N) / 1e5 < 1 for budget "
            f"{n[low][0]:,.0f} with {smallest:,.0f} samples in the best bucket (a={params.a}); "
            f"the law is calibrated from {floor:,.0f} samples. Fit it to pilot runs at "
            "your scale, or rescale a to your bucket size")


def best_pool(params: LawParams, budgets: Sequence[float] | float | np.ndarray,
              bucket_samples: Sequence[float] | float,
              variant: Variant = "repetition") -> np.ndarray:
    """The number of top buckets to keep (1..K) for each budget: argmin_k y_k(N)."""
    check_in_range(params, budgets, bucket_samples)
    return np.argmin(error_table(params, budgets, bucket_samples, variant), axis=0) + 1


def rescaled(params: LawParams, bucket_samples: float,
             reference_samples: float = DATACOMP_MEDIUM_BUCKET_SAMPLES) -> LawParams:
    """The same law with `a` scaled so one epoch of a `bucket_samples` bucket plays the part
    one epoch of a `reference_samples` bucket did: decisions then depend on epochs of your
    buckets as they did on epochs of the published ones."""
    if not np.isfinite(bucket_samples) or bucket_samples <= 0:
        raise ScalingLawError(f"bucket size must be positive: {bucket_samples}")
    return params.model_copy(update={"a": params.a * reference_samples / bucket_samples})


# ---- fitting from pilot runs -------------------------------------------------------------


@dataclass(frozen=True)
class PilotTable:
    """Pilot runs: each trained on one bucket alone for `samples` samples, with its error."""

    bucket: np.ndarray
    samples: np.ndarray
    error: np.ndarray
    tolerance: float = 0.0

    @classmethod
    def of(cls, bucket: Sequence[int], samples: Sequence[float], error: Sequence[float],
           *, tolerance: float = 0.0) -> PilotTable:
        """Validated pilots: finite, positive, and error not rising with samples per bucket
        (by more than `tolerance`): a table that does is mislabeled or too noisy to fit."""
        table = cls(np.asarray(bucket), np.asarray(samples, dtype=np.float64),
                    np.asarray(error, dtype=np.float64), tolerance)
        table.check()
        return table

    def check(self) -> None:
        tolerance = self.tolerance
        if not (self.bucket.shape == self.samples.shape == self.error.shape) \
                or self.bucket.ndim != 1 or self.bucket.size == 0:
            raise ScalingLawError("pilot table needs equal, non-empty bucket, samples and "
                                  "error columns")
        if not np.issubdtype(self.bucket.dtype, np.integer) or np.any(self.bucket < 0):
            raise ScalingLawError(f"pilot buckets must be integers >= 0 (0 = best): "
                                  f"{self.bucket.tolist()}")
        for name, values in (("samples", self.samples), ("error", self.error)):
            bad = ~np.isfinite(values) | (values <= 0)
            if np.any(bad):
                raise ScalingLawError(f"pilot {name} must be positive and finite; row(s) "
                                      f"{np.flatnonzero(bad).tolist()} are not")
        for bucket in np.unique(self.bucket):
            rows = self.bucket == bucket
            seen, inverse = np.unique(self.samples[rows], return_inverse=True)
            mean = np.bincount(inverse, self.error[rows]) / np.bincount(inverse)
            rises = np.flatnonzero(np.diff(mean) > tolerance)
            if rises.size:
                i = int(rises[0])
                raise ScalingLawError(
                    f"pilot table is not monotone: bucket {bucket} error rises from "
                    f"{mean[i]:.4g} at {seen[i]:,.0f} samples to {mean[i + 1]:.4g} at "
                    f"{seen[i + 1]:,.0f}; error must not grow with samples seen "
                    f"(tolerance {tolerance})")


class FitResult(BaseModel):
    """Fitted parameters and how well they explain the pilots."""

    model_config = ConfigDict(frozen=True)

    params: LawParams
    rmse: float
    residuals: list[float]
    d_fixed: bool


def _unpack(theta: np.ndarray, buckets: int, d: float | None) -> LawParams:
    a = float(np.exp(theta[0]))
    offset = 1 if d is not None else 2
    fitted_d = d if d is not None else float(theta[1])
    b = (-np.exp(theta[offset:offset + buckets])).tolist()
    tau = np.exp(theta[offset + buckets:offset + 2 * buckets]).tolist()
    return LawParams.model_construct(a=a, d=fitted_d, b=b, tau=tau)


def fit_law(pilots: PilotTable, bucket_samples: Sequence[float] | float, *,
            d: float | None = 0.1, starts: int = 4) -> FitResult:
    """Least squares of predicted vs measured error over the pilot runs.

    `d` fixed (the paper fixes 0.1) or None to fit it too. Every bucket 0..K-1 needs runs,
    and one past its first epoch: the half-life is only visible in repeated data. Starts
    from a small grid of a and tau and keeps the best fit (the loss is not convex in a).
    """
    from scipy.optimize import least_squares

    pilots.check()
    buckets = int(pilots.bucket.max()) + 1
    sizes = _bucket_sizes(bucket_samples, buckets)
    for bucket in range(buckets):
        rows = pilots.bucket == bucket
        if not np.any(rows):
            raise ScalingLawError(f"no pilot runs for bucket {bucket}; every bucket from 0 "
                                  f"to {buckets - 1} needs some")
        if not np.any(pilots.samples[rows] > sizes[bucket]):
            raise ScalingLawError(
                f"bucket {bucket} has no pilot run past one epoch ({sizes[bucket]:,.0f} "
                "samples): its repetition half-life cannot be fitted")
    unknowns = 2 * buckets + (2 if d is None else 1)
    if pilots.bucket.size < unknowns:
        raise ScalingLawError(f"{pilots.bucket.size} pilot runs cannot fit {unknowns} "
                              "parameters")
    groups = [(bucket, pilots.bucket == bucket) for bucket in range(buckets)]

    def residuals(theta: np.ndarray) -> np.ndarray:
        params = _unpack(theta, buckets, d)
        out = np.empty_like(pilots.error)
        for bucket, rows in groups:
            pool = bucket_pool(params, bucket, sizes[bucket])
            out[rows] = repetition_error(pool, pilots.samples[rows], params.a, params.d)
        return out - pilots.error

    best = None
    for a0 in np.logspace(-3, 0, starts):
        for tau0 in (2.0, 8.0):
            head = [np.log(a0)] if d is not None else [np.log(a0), 0.05]
            theta0 = np.array([*head, *[np.log(0.1)] * buckets, *[np.log(tau0)] * buckets])
            with np.errstate(all="ignore"):
                fit = least_squares(residuals, theta0, method="trf", x_scale="jac",
                                    max_nfev=2000)
            if np.isfinite(fit.cost) and (best is None or fit.cost < best.cost):
                best = fit
    if best is None:
        raise ScalingLawError("the fit did not converge from any start")
    params = _unpack(best.x, buckets, d)
    if d is None and params.d < 0:
        raise ScalingLawError(f"the fitted irreducible error d={params.d:.4g} is negative; "
                              "fix d instead")
    final = residuals(best.x)
    return FitResult(params=LawParams.model_validate(params.model_dump()),
                     rmse=float(np.sqrt(np.mean(final ** 2))), residuals=final.tolist(),
                     d_fixed=d is not None)
