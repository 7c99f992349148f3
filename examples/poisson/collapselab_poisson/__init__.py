"""`poisson`: counts fitted by a Poisson distribution, a CollapseLab family that lives outside
CollapseLab (its README shows how it is installed, checked and run).

The real data are counts drawn from Poisson(`rate`); a model is fitted by its maximum-likelihood
rate, the sample mean. Under `replace` with n counts a generation the fitted rate is a martingale:
E[rate_t] = rate and Var(rate_t) = (t + 1) rate / n exactly, so the chain's rate wanders further
and further from the truth until a generation draws only zeros, where the fit is a point mass at 0
for ever (`Degenerate`). Both laws hold with those chains counted at rate 0 (`references`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field
from scipy.special import gammaln

from collapselab.data import RealData, SampledData
from collapselab.models.base import (
    NON_NEGATIVE,
    SHARE,
    Degenerate,
    FamilyParams,
    MetricInfo,
    ModelFamily,
)
from collapselab.onset import Threshold
from collapselab.theory import ClosedForm, replace_like

#: Largest true rate: a count of a few million still fits the int64 points and float64 sums.
MAX_RATE = 1e6
#: Tempered sampling draws from p(k)^(1/T) renormalised over counts 0..K, K this many of the
#: tempered distribution's standard deviations above its mode: what lies beyond is below 1e-20.
TAIL_SDS = 12.0


class PoissonParams(FamilyParams):
    family: Literal["poisson"] = "poisson"
    #: The true rate (mean count) of the real data.
    rate: float = Field(3.0, gt=0, le=MAX_RATE, allow_inf_nan=False)


class PoissonFamily(ModelFamily):
    """Counts, fitted by their mean. A point is one count (an int64 array of shape (n,))."""

    name = "poisson"
    Params = PoissonParams
    temperature_meaning = "p(k)^(1/T) renormalised over the counts (exact)"
    # two counts are often equal: a held-out count cannot be recognised by its value
    distinct_points = False
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "rate_ratio": MetricInfo(
            title="Rate ratio",
            axis_label="rate_t / rate",
            unit="",
            meaning="Fitted rate / true rate; 1 = no drift, 0 = collapsed to zero counts",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "rate_sq_error": MetricInfo(
            title="Relative squared error of the rate",
            axis_label="(rate_t / rate − 1)²",
            unit="",
            meaning="Squared relative error of the fitted rate, (rate_t / rate - 1)^2",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per count)",
            unit="nats per count",
            meaning="Mean negative log-likelihood of held-out real counts under the fitted "
            "Poisson (nats per count)",
            better="lower",
            y_scale="auto-log",
        ),
        "zero_mass": MetricInfo(
            title="Mass on zero",
            axis_label="P_t(count = 0)",
            unit="share",
            meaning="The model's probability of a zero count, exp(-rate_t): it grows to 1 as "
            "the rate collapses to a point mass at 0",
            better="neither",
            domain=SHARE,
        ),
    }
    #: The rate halved: the chain has lost half its mean count (not calibrated on a study of
    #: controls as the built-in families' indicators are: a plug-in's own choice).
    collapse_indicators = (Threshold("rate_ratio", "below", 0.5),)

    params: PoissonParams

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        return 8

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[ClosedForm]:
        """Replace: the ML rate is a martingale (E[rate_t] = rate) whose variance grows by
        rate / n a fit, so E[(rate_t / rate - 1)^2] = (t + 1) / (n rate)."""
        assert isinstance(params, PoissonParams)
        if not replace_like(strategy):
            return []
        rate = params.rate
        return [
            ClosedForm(
                "rate_ratio",
                "E[rate ratio] = 1 (a martingale)",
                lambda t: np.ones_like(np.asarray(t, dtype=float)),
            ),
            ClosedForm(
                "rate_sq_error",
                f"E[(rate_t / rate - 1)^2] = (t+1) / (n rate), rate = {rate:g}, n = {n}",
                lambda t: (np.asarray(t, dtype=float) + 1.0) / (n * rate),
            ),
        ]

    @classmethod
    def value_after_degenerate(cls, metric: str) -> float | None:
        """A chain that drew only zeros stays at rate 0 for ever (a Poisson(0) draws only
        zeros): both laws above count it there."""
        return {"rate_ratio": 0.0, "rate_sq_error": 1.0}.get(metric)

    def real_data(self) -> RealData:
        rate = self.params.rate

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return rng.poisson(rate, size=n).astype(np.int64)

        return SampledData(key=f"poisson(rate={rate!r})", draw=draw)

    def fit(self, X: np.ndarray) -> Self:
        counts = np.asarray(X).reshape(-1)
        if counts.size == 0:
            raise Degenerate("no training counts: the rate is undefined")
        self.rate_ = float(counts.mean())
        if self.rate_ <= 0.0:
            raise Degenerate("every training count is 0: the fitted rate is 0, a point mass")
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        if temperature == 1.0:
            return rng.poisson(self.rate_, size=n).astype(np.int64)
        # p(k)^(1/T) ∝ exp((k log rate - log k!) / T): inverse CDF over a support holding it all
        spread = math.sqrt(temperature * self.rate_) + 1.0
        top = int(self.rate_ + TAIL_SDS * spread + 10)
        support = np.arange(top + 1)
        log_weights = (support * math.log(self.rate_) - gammaln(support + 1)) / temperature
        weights = np.exp(log_weights - log_weights.max())
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        return np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood in nats per count: rate - k log rate + log k!."""
        counts = np.asarray(X, dtype=float).reshape(-1)
        nll = self.rate_ - counts * math.log(self.rate_) + gammaln(counts + 1.0)
        return float(nll.mean())

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        ratio = self.rate_ / self.params.rate
        return {
            "rate_ratio": ratio,
            "rate_sq_error": (ratio - 1.0) ** 2,
            "test_nll": self.score(test),
            "zero_mass": math.exp(-self.rate_),
        }
