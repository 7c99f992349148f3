"""`knowledge`: knowledge collapse (Peterson, "AI and the Problem of Knowledge Collapse", 2024).

The truth is a heavy-tailed Student t with `df` degrees of freedom: the centre is common
knowledge, the tails are rare, specialised knowledge. Public knowledge at generation t is a
Gaussian KDE (Scott's bandwidth, as the paper's `gaussian_kde`) of what the learners of its
training set hold. A point is one holding: (value, source, round, learned full, learned AI):
source 0 for real data (R0 and fresh real points), 1 a learner's full draw, 2 a draw from the
AI; the round it was drawn in (0 for real data) and the payoffs learners had learned for each
source after that round, which the next generation's learners start from.

A generation (`sample`) is the paper's (its code, aristotle-tek/knowledge-collapse, default
model): `rounds` rounds (at least; more until n learners have drawn) of `learners` learners with
types theta (log-normal, mean 1, sd 0.5). A learner values a source at theta x its learned
payoff; a full draw costs the median of the round's values and the AI's (1 - `discount`) of it;
each takes the larger positive net value (ties: the AI) or nothing. As the paper's code draws
them, the AI returns a t of the truth's shape scaled to public knowledge's standard deviation at
the generation's start, kept within +-`truncation` (the truth's units), and a full draw is the
same t untruncated (`full_draws: public`) or the truth itself (`truth`). A draw's payoff is how
much it brings the public KDE (the last m held values, m the training set's size, the bandwidth
refitted with the draw) closer to the truth in Hellinger distance, floored at 0; learners move
their estimate of each source `learning_rate` of the way to the round's mean payoff (when
nonzero; a source fewer than 3 learners drew is tried with extra draws that only inform the
estimate, the paper's `min_samples`). A training set without learners (R0) starts them at each
source's expected payoff (the paper's forward-looking initial estimate). The generation's last
n draws are its points: under `replace` with n = 100, public knowledge is the paper's sliding
window of the last 100 draws.

Where it still differs from the paper's code: generation 0 is fitted on R0, draws of the truth,
where the paper starts from a KDE of 100 draws of N(1, 1); types are drawn afresh each round
(the paper keeps 25 learners for the whole run); the extra `min_samples` draws come from the
source's current law (the paper's from the unscaled truth).

Hellinger distances are trapezoid sums on a uniform grid over every kernel's reach (spacing at
most h/5 and 0.04), plus the truth's tails beyond it, where the KDE is nil: against a closed
form the error is below 1e-6 (tests/models/test_knowledge.py). Within a generation the KDE of a
changing window at a changing bandwidth is a third-order Taylor expansion in the bandwidth of
kernel sums kept on the grid (added and removed kernel by kernel, rebuilt when the bandwidth
moves more than REBASE; a draw that moves it further is refitted exactly), so a round costs
O(learners x grid), not O(m x grid); a payoff (about 1e-3) is within 1e-7 of an exact refit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from collapselab.data import RealData, SampledData
from collapselab.models.base import (
    NON_NEGATIVE,
    SHARE,
    CalibrationCells,
    Degenerate,
    ExamplesInfo,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    register,
)
from collapselab.onset import Threshold

#: Where a point's source is recorded: real data, a learner's full draw, a draw from the AI.
REAL, FULL, AI = 0, 1, 2
#: A point's columns: value, source, round, learned payoff of a full draw and of the AI's.
VALUE, SOURCE, ROUND, LEARNED_FULL, LEARNED_AI = range(5)
COLUMNS = 5
#: A learner of a round who takes neither source (the paper's "not buying").
NOTHING = -1
#: Learner types theta: log-normal with this mean and standard deviation (the paper's).
TYPE_MEAN, TYPE_SD = 1.0, 0.5
#: The full sample's cost: this percentile of a round's value estimates (the paper's median).
COST_PERCENTILE = 50.0
#: A source fewer learners drew in a round is tried this often to estimate its payoff.
MIN_SAMPLES = 3
#: Grid spacing of the Hellinger sums: at most this, and at most h / GRID_PER_BANDWIDTH.
GRID_SPACING = 0.04
GRID_PER_BANDWIDTH = 5
#: The grid reaches this many bandwidths past the farthest kernel (the KDE beyond: < 1e-21).
KERNEL_REACH = 10.0
#: And at least as far as the truth's central 1 - TRUTH_OUTSIDE (its tails beyond are exact).
TRUTH_OUTSIDE = 1e-4
#: At most this many grid points: a collapsed, very narrow KDE gets a coarser grid (its distance
#: to the truth is then near 1 and less precise), not a slow one.
MAX_GRID = 4_001
#: Kernels evaluated at once (each a row of the grid): bounds the memory of a large pool.
KERNEL_CHUNK = 256
#: The kernel sums are rebuilt at the current bandwidth when it moved more than this share from
#: the one they were expanded at (the expansion's relative error is then below about 1e-5).
REBASE = 0.05
#: Quantile midpoints of the quadrature of a source's expected payoff.
PAYOFF_QUADRATURE = 200
#: The examples' grid: this many true standard deviations each side, this many points.
EXAMPLE_HALF_WIDTH, EXAMPLE_POINTS = 4.0, 161
#: Significant digits kept of the examples' densities.
EXAMPLE_DIGITS = 4


class KnowledgeParams(FamilyParams):
    family: Literal["knowledge"] = "knowledge"
    #: Degrees of freedom of the Student t truth (the paper: 10); above 2 so that "2 true
    #: standard deviations" exists, at least 3 so the grid over its tails stays small.
    df: float = Field(10.0, ge=3.0, le=1000.0, allow_inf_nan=False)
    #: The AI keeps its draws within +-truncation (the paper's sigma_tr, in the truth's units;
    #: its default model 0.75).
    truncation: float = Field(0.75, ge=0.1, le=10.0, allow_inf_nan=False)
    #: Share off the full sample's cost that an AI sample enjoys: 0 none, 0.2 the paper's
    #: headline (its "discount rate 0.8").
    discount: float = Field(0.2, ge=0.0, lt=1.0, allow_inf_nan=False)
    #: How far learners move their estimate of a source towards a round's mean payoff (the
    #: paper's default model 0.05).
    learning_rate: float = Field(0.05, gt=0.0, le=1.0, allow_inf_nan=False)
    #: Rounds of learners a generation at least (the paper's 10).
    rounds: int = Field(10, ge=1, le=1000)
    #: Learners a round (the paper's 25).
    learners: int = Field(25, ge=2, le=10_000)
    #: A full draw: the truth's shape scaled to public knowledge's sd (`public`, the paper's
    #: code), or the truth itself (`truth`).
    full_draws: Literal["public", "truth"] = "public"


def truth_sd(df: float) -> float:
    return math.sqrt(df / (df - 2.0))


def normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def truth_pdf(x: np.ndarray, df: float) -> np.ndarray:
    from scipy.stats import t as student_t

    return np.asarray(student_t.pdf(x, df), dtype=float)


@lru_cache(maxsize=64)
def truth_outside(half_width: float, df: float) -> float:
    """The truth's mass beyond +-half_width."""
    from scipy.stats import t as student_t

    return float(2.0 * student_t.sf(half_width, df))


@lru_cache(maxsize=64)
def truth_reach(df: float) -> float:
    """Half-width holding all but TRUTH_OUTSIDE of the truth."""
    from scipy.stats import t as student_t

    return float(student_t.isf(TRUTH_OUTSIDE / 2.0, df))


def trapezoid_weights(points: int, spacing: float) -> np.ndarray:
    weights = np.full(points, spacing)
    weights[[0, -1]] = spacing / 2.0
    return weights


def kde_on(grid: np.ndarray, centres: np.ndarray, bandwidth: float) -> np.ndarray:
    """The Gaussian KDE of `centres` at `grid` (every kernel evaluated, in chunks)."""
    density = np.zeros_like(grid)
    for start in range(0, len(centres), KERNEL_CHUNK):
        block = centres[start : start + KERNEL_CHUNK, None]
        density += normal_pdf((grid[None, :] - block) / bandwidth).sum(axis=0)
    return density / (len(centres) * bandwidth)


def hellinger_on_grid(
    p: np.ndarray, q: np.ndarray, weights: np.ndarray, outside: float
) -> np.ndarray:
    """Hellinger distance sqrt(1/2 integral (sqrt p - sqrt q)^2) from densities on a grid (the
    last axis) with trapezoid `weights`, plus `outside`: the mass of q beyond the grid, where p is
    nil."""
    squared = ((np.sqrt(p) - np.sqrt(q)) ** 2) @ weights + outside
    return np.sqrt(np.clip(0.5 * squared, 0.0, 1.0))


def scott_bandwidth(
    count: float, total: float | np.ndarray, squares: float | np.ndarray
) -> float | np.ndarray:
    """Scott's bandwidth (scipy's gaussian_kde in 1-D) from a sample's count, sum and sum of
    squares: its sd (ddof 1) x count^(-1/5)."""
    variance = np.maximum(squares - total * total / count, 0.0) / (count - 1.0)
    return np.sqrt(variance) * count ** (-1 / 5)


def lognormal_parameters(mean: float, sd: float) -> tuple[float, float]:
    """(mu, sigma) of the normal whose exponential has this mean and sd."""
    sigma2 = math.log1p((sd / mean) ** 2)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


def choices(
    thetas: np.ndarray, payoff_full: float, payoff_ai: float, discount: float
) -> np.ndarray:
    """The paper's decision, FULL, AI or NOTHING, of each learner of a round by type."""
    value_full, value_ai = thetas * payoff_full, thetas * payoff_ai
    cost = float(np.percentile(np.concatenate([value_full, value_ai]), COST_PERCENTILE))
    net_full, net_ai = value_full - cost, value_ai - (1.0 - discount) * cost
    chosen = np.full(len(thetas), NOTHING)
    chosen[(net_full > net_ai) & (net_full > 0)] = FULL
    chosen[(net_ai >= net_full) & (net_ai > 0)] = AI
    return chosen


class PublicKnowledge:
    """The KDE of a window of held values on a grid, against the truth: its Hellinger distance,
    each candidate draw's payoff, and the window sliding as a round's draws arrive.

    Kept as sums over the window's kernels at a base bandwidth h0 of phi(u) and its first three
    derivatives in h (u = (x - w) / h0), so the KDE at the window's own Scott bandwidth h is
    a Taylor sum in h - h0 and a kernel added or removed costs one grid row."""

    def __init__(self, values: np.ndarray, df: float, capacity: int) -> None:
        self.df, self.capacity = df, capacity
        self.window = np.asarray(values, dtype=float)
        self.count = float(len(self.window))
        self.total = float(self.window.sum())
        self.squares = float(self.window @ self.window)
        self._rebuild()

    def copy(self) -> PublicKnowledge:
        twin = object.__new__(PublicKnowledge)
        twin.__dict__.update(self.__dict__)
        twin.sums = self.sums.copy()
        return twin

    @property
    def bandwidth(self) -> float:
        return float(scott_bandwidth(self.count, self.total, self.squares))

    def _rebuild(self, farthest: float = 0.0) -> None:
        h = self.base = self.bandwidth
        if not h > 0:
            raise Degenerate("the learners hold one value: public knowledge has no spread")
        reach = max(float(np.abs(self.window).max()), farthest) + KERNEL_REACH * h
        half = max(reach, truth_reach(self.df))
        spacing = min(GRID_SPACING, h / GRID_PER_BANDWIDTH)
        points = min(MAX_GRID, 2 * math.ceil(half / spacing) + 1)
        self.grid = np.linspace(-half, half, points)
        self.weights = trapezoid_weights(points, self.grid[1] - self.grid[0])
        self.outside = truth_outside(half, self.df)
        self.truth = truth_pdf(self.grid, self.df)
        self.sums = np.zeros((4, points))
        self._add_kernels(self.window, sign=1.0)

    def _add_kernels(self, centres: np.ndarray, *, sign: float) -> None:
        """Add (sign 1) or remove (-1) kernels: phi(u) and its first three derivatives in h at
        h0, each on the grid points within KERNEL_REACH h0 of its centre (beyond: < 1e-21)."""
        if not len(centres):
            return
        h, grid = self.base, self.grid
        spacing = grid[1] - grid[0]
        reach = math.ceil(KERNEL_REACH * h / spacing)
        offsets = np.arange(-reach, reach + 1)
        for start in range(0, len(centres), KERNEL_CHUNK):
            block = centres[start : start + KERNEL_CHUNK]
            nearest = np.rint((block - grid[0]) / spacing).astype(int)
            index = np.clip(nearest[:, None] + offsets[None, :], 0, len(grid) - 1)
            u = (grid[index] - block[:, None]) / h
            u2 = u * u
            phi = sign * normal_pdf(u)
            terms = (
                phi,
                phi * u2 / h,
                phi * (u2 * u2 - 3.0 * u2) / h**2,
                phi * (u2**3 - 9.0 * u2 * u2 + 12.0 * u2) / h**3,
            )
            flat = index.ravel()
            for k, term in enumerate(terms):
                self.sums[k] += np.bincount(flat, weights=term.ravel(), minlength=len(grid))

    def _kernel_sum(self, h: np.ndarray) -> np.ndarray:
        """sum phi((x - w) / h) over the window, on the grid, for each bandwidth in h (k,)."""
        step = (h - self.base)[:, None]
        s0, s1, s2, s3 = self.sums
        # kernels added and removed leave rounding dust around 0 far out: a density is >= 0
        return np.maximum(s0 + step * (s1 + step * (s2 / 2.0 + step * s3 / 6.0)), 0.0)

    def density(self) -> np.ndarray:
        h = np.array([self.bandwidth])
        return self._kernel_sum(h)[0] / (self.count * h[0])

    def hellinger(self) -> float:
        return float(hellinger_on_grid(self.density(), self.truth, self.weights, self.outside))

    def _covers(self, draws: np.ndarray) -> bool:
        farthest = float(np.abs(draws).max(initial=0.0))
        return farthest + KERNEL_REACH * self.bandwidth <= self.grid[-1]

    def payoffs(self, draws: np.ndarray) -> np.ndarray:
        """Each draw's payoff: the Hellinger distance to the truth it removes when added to the
        window (bandwidth refitted), floored at 0 (the paper's)."""
        if not len(draws):
            return np.empty(0)
        if not self._covers(draws):
            self._rebuild(float(np.abs(draws).max()))
        before = self.hellinger()
        count = self.count + 1.0
        h = np.asarray(
            scott_bandwidth(count, self.total + draws, self.squares + draws * draws), dtype=float
        )
        kernels = normal_pdf((self.grid[None, :] - draws[:, None]) / h[:, None])
        added = (self._kernel_sum(h) + kernels) / (count * h[:, None])
        for far in np.flatnonzero(np.abs(h - self.base) > REBASE * self.base):
            # a far draw moves the bandwidth beyond the expansion's reach: refit it exactly
            added[far] = kde_on(self.grid, np.append(self.window, draws[far]), float(h[far]))
        after = hellinger_on_grid(added, self.truth, self.weights, self.outside)
        return np.maximum(before - after, 0.0)

    def slide(self, draws: np.ndarray) -> None:
        """Add a round's draws; the oldest values leave so the window keeps its capacity."""
        joined = np.concatenate([self.window, draws])
        leaving, self.window = joined[: -self.capacity], joined[-self.capacity :]
        self.count = float(len(self.window))
        self.total = float(self.window.sum())
        self.squares = float(self.window @ self.window)
        if abs(self.bandwidth - self.base) > REBASE * self.base or not self._covers(draws):
            self._rebuild()
            return
        self._add_kernels(draws, sign=1.0)
        self._add_kernels(leaving, sign=-1.0)


@register
class KnowledgeCollapse(ModelFamily):
    name = "knowledge"
    Params = KnowledgeParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "hellinger_distance": MetricInfo(
            title="Public knowledge's distance to the truth",
            axis_label="Hellinger distance",
            unit="",
            meaning="Hellinger distance of public knowledge (the KDE of what learners hold) to "
            "the true distribution (Peterson's measure of knowledge collapse); 0 = identical",
            better="lower",
            reference=0.0,
            domain=SHARE,
        ),
        "tail_mass_ratio": MetricInfo(
            title="Tail knowledge kept",
            axis_label="tail mass / truth's",
            unit="",
            meaning="Public knowledge's mass beyond 2 true standard deviations over the "
            "truth's; 1 = the tails kept, 0 = forgotten",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "ai_source_share": MetricInfo(
            title="Knowledge from the AI",
            axis_label="share of learners",
            unit="share",
            meaning="Share of the points public knowledge is fitted on that learners drew from "
            "the AI source",
            better="neither",
            domain=SHARE,
        ),
        "sd_ratio": MetricInfo(
            title="Spread of public knowledge",
            axis_label="sd / true sd",
            unit="",
            meaning="Standard deviation of public knowledge over the truth's; 1 = no narrowing",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per point)",
            unit="nats per point",
            meaning="Mean negative log-likelihood of held-out draws of the truth under public "
            "knowledge (nats per point)",
            better="lower",
        ),
    }
    temperature_meaning = (
        "the AI source's density^(1/T) before truncation (exact: a t of (df + 1) / T - 1 degrees "
        "of freedom, rescaled); full draws are untouched"
    )
    examples_info = ExamplesInfo(
        kind="curve",
        x_label="knowledge (true sd = 1.1 at df = 10)",
        y_label="density",
        caption="Public knowledge's density by generation against the truth (dashed): knowledge "
        "collapse is the tails thinning and the centre rising.",
    )
    #: Public knowledge further than 0.3 from the truth in Hellinger distance for 4 generations
    #: (the run-wide persistence). A KDE of 100 true draws is about 0.09 away; the control
    #: (half real points a generation) never held a distance above 0.14 for 4 generations in 60
    #: runs; the surely collapsing cells (replace: the AI at half price, truncated to +-0.3)
    #: cross it in 95% of runs. Their collapse comes in bursts (whole rounds switch to the AI),
    #: so the trend is read at confidence 0.7: 67% of late onsets warned in time, 3% false
    #: alarms (0.95: 25%, 0%). A level relative to generation 0 tripped the controls (1.5 x a
    #: noisy 0.09), and so did a single generation's tail mass below 0.5 (the former rule).
    collapse_indicators = (Threshold("hellinger_distance", "above", 0.3, confidence=0.7),)
    calibration: ClassVar[CalibrationCells | None] = CalibrationCells(
        controls=("fixed-fraction(p=0.5)",),
        collapsing=("replace", "replace(T=0.8)", "replace(T=2)"),
        why="half the training set real keeps public knowledge near the truth's KDE whatever "
        "the learners draw; under replace learners who take the half-price AI, truncated to "
        "+-0.3, narrow it generation after generation and full draws, scaled to it, follow",
        ci_replicates=20,
    )

    params: KnowledgeParams

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        return COLUMNS * 8

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """Points (and a generation's draws), the kernel sums and a chunk of kernel terms on the
        grid, and a round's candidate draws (or the quadrature's points) on the grid."""
        assert isinstance(params, KnowledgeParams)
        drawn = n + params.rounds * params.learners
        points = 4 * COLUMNS * 8 * (train_points + drawn + test_size)
        grid = 8 * MAX_GRID
        candidates = max(params.learners + 2 * MIN_SAMPLES, PAYOFF_QUADRATURE)
        return points + 16 * grid + 8 * KERNEL_CHUNK * grid + 4 * candidates * grid

    def real_data(self) -> RealData:
        df = self.params.df

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            points = np.zeros((n, COLUMNS))
            points[:, VALUE] = rng.standard_t(df, size=n)
            return points

        return SampledData(key=f"knowledge(student t, df={df!r})", draw=draw)

    # --- public knowledge -----------------------------------------------------------------

    def fit(self, X: np.ndarray) -> Self:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != COLUMNS:
            raise ValueError(
                f"points are (value, source, round, learned full, learned AI) rows, got shape "
                f"{X.shape}"
            )
        sources = np.rint(X[:, SOURCE]).astype(int)
        if not np.isin(sources, (REAL, FULL, AI)).all():
            raise ValueError("a point's source must be 0 (real), 1 (a full draw) or 2 (the AI)")
        values = X[:, VALUE].copy()
        m = len(values)
        if m < 2 or not float(np.std(values)) > 0:
            raise Degenerate(f"the {m} learners hold one value: public knowledge has no spread")
        # the window slides oldest first: order the holdings by the round they were drawn in
        order = np.argsort(X[:, ROUND], kind="stable")
        self.values_ = values[order]
        self.public_ = PublicKnowledge(self.values_, self.params.df, capacity=m)
        self.bandwidth_ = self.public_.bandwidth
        self.mean_ = float(values.mean())
        self.sd_ = math.sqrt(float(values.var()) + self.bandwidth_**2)
        self.scale_ = 1.0
        if self.params.full_draws == "public":
            self.scale_ = self.sd_ / truth_sd(self.params.df)
        self.ai_share_ = float(np.mean(sources == AI))
        self.hellinger_ = self.public_.hellinger()
        learners = np.flatnonzero(sources != REAL)
        if learners.size:
            latest = X[learners[np.argmax(X[learners, ROUND])]]
            self.round_ = float(latest[ROUND])
            self.learned_ = (float(latest[LEARNED_FULL]), float(latest[LEARNED_AI]))
        else:
            self.round_ = 0.0
            self.learned_ = (self._expected_payoff(FULL), self._expected_payoff(AI))
        if not max(self.learned_) > 0:
            raise Degenerate("learners expect no payoff from either source: none would learn")
        return self

    def _ai_law(self, temperature: float) -> tuple[float, float]:
        """(degrees of freedom, scale) of the AI's density^(1/T): the t's density to the 1/T is
        (1 + x^2 / (df s^2))^(-(df + 1) / 2T), a t with df' = (df + 1) / T - 1 scaled by
        s sqrt(df / df'); df' <= 0 is returned as is (not a t: bounded by the truncation)."""
        df = self.params.df
        tempered = (df + 1.0) / temperature - 1.0
        if tempered <= 0:
            return tempered, self.scale_
        return tempered, self.scale_ * math.sqrt(df / tempered)

    def _expected_payoff(self, source: int) -> float:
        """A source's expected payoff under public knowledge, at PAYOFF_QUADRATURE quantile
        midpoints of its draws."""
        levels = (np.arange(PAYOFF_QUADRATURE) + 0.5) / PAYOFF_QUADRATURE
        if source == FULL:
            from scipy.stats import t as student_t

            draws = self.scale_ * np.asarray(student_t.ppf(levels, self.params.df), dtype=float)
        else:
            draws = self._truncated_quantiles(levels, temperature=1.0)
        return float(self.public_.payoffs(draws).mean())

    def _truncated_quantiles(self, levels: np.ndarray, *, temperature: float) -> np.ndarray:
        """The AI's draws at these quantile levels (uniforms give draws, midpoints quadrature)."""
        from scipy.stats import t as student_t

        df, scale = self._ai_law(temperature)
        bound = self.params.truncation
        if df <= 0:  # density^(1/T) no longer a t: invert its CDF on a fine grid of the interval
            x = np.linspace(-bound, bound, 4001)
            density = (1.0 + (x / scale) ** 2 / self.params.df) ** (
                -(self.params.df + 1.0) / (2.0 * temperature)
            )
            cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])
            return np.asarray(np.interp(levels, cdf / cdf[-1], x), dtype=float)
        edge = float(student_t.cdf(bound / scale, df))
        low = 1.0 - edge
        return scale * np.asarray(student_t.ppf(low + levels * (edge - low), df), dtype=float)

    # --- the next generation of learners ----------------------------------------------------

    def _full_draws(self, k: int, rng: np.random.Generator) -> np.ndarray:
        return self.scale_ * rng.standard_t(self.params.df, size=k)

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        params = self.params
        mu, sigma = lognormal_parameters(TYPE_MEAN, TYPE_SD)
        public = self.public_.copy()
        learned = list(self.learned_)
        rows: list[np.ndarray] = []
        drawn, rounds, clock = 0, 0, self.round_
        while rounds < params.rounds or drawn < n:
            thetas = rng.lognormal(mu, sigma, size=params.learners)
            chosen = choices(thetas, learned[0], learned[1], params.discount)
            taken = {source: int(np.sum(chosen == source)) for source in (FULL, AI)}
            draws = {
                FULL: self._full_draws(max(taken[FULL], MIN_SAMPLES), rng),
                AI: self._truncated_quantiles(
                    rng.random(max(taken[AI], MIN_SAMPLES)), temperature=temperature
                ),
            }
            for index, source in enumerate((FULL, AI)):
                mean_payoff = float(public.payoffs(draws[source]).mean())
                if mean_payoff != 0:  # the paper learns only from rounds that moved knowledge
                    learned[index] += params.learning_rate * (mean_payoff - learned[index])
            clock += 1
            kept = np.concatenate([draws[FULL][: taken[FULL]], draws[AI][: taken[AI]]])
            round_rows = np.empty((len(kept), COLUMNS))
            round_rows[:, VALUE] = kept
            round_rows[:, SOURCE] = np.repeat([FULL, AI], [taken[FULL], taken[AI]])
            round_rows[:, ROUND] = clock
            round_rows[:, LEARNED_FULL], round_rows[:, LEARNED_AI] = learned
            rows.append(round_rows)
            public.slide(kept)
            drawn += len(kept)
            rounds += 1
        return np.concatenate(rows)[drawn - n :]

    # --- scores -----------------------------------------------------------------------------

    def _log_density(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        h, values = self.bandwidth_, self.values_
        out = np.empty(len(x))
        step = max(1, (1 << 16) // max(1, len(values)))
        for start in range(0, len(x), step):
            z = (x[start : start + step, None] - values[None, :]) / h
            out[start : start + step] = logsumexp(-0.5 * z * z, axis=1)
        return out - math.log(len(values) * h * math.sqrt(2.0 * math.pi))

    def score(self, X: np.ndarray) -> float:
        values = np.asarray(X, dtype=float).reshape(len(X), -1)[:, VALUE]
        return float(-np.mean(self._log_density(values)))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        from scipy.special import ndtr

        df, h = self.params.df, self.bandwidth_
        edge = 2.0 * truth_sd(df)
        public_tail = np.mean(ndtr((-edge - self.values_) / h) + ndtr((self.values_ - edge) / h))
        return {
            "hellinger_distance": self.hellinger_,
            "tail_mass_ratio": float(public_tail) / truth_outside(edge, df),
            "ai_source_share": self.ai_share_,
            "sd_ratio": self.sd_ / truth_sd(df),
            "test_nll": self.score(test),
        }

    # --- examples ---------------------------------------------------------------------------

    @classmethod
    def example_grid(cls, params: KnowledgeParams) -> np.ndarray:
        half = EXAMPLE_HALF_WIDTH * truth_sd(params.df)
        return np.linspace(-half, half, EXAMPLE_POINTS)

    @classmethod
    def examples_truth(cls, params: FamilyParams) -> dict[str, list[float]]:
        """The truth's density on the examples' grid: the dashed line."""
        assert isinstance(params, KnowledgeParams)
        x = cls.example_grid(params)
        return curve(x, truth_pdf(x, params.df))

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        x = self.example_grid(self.params)
        return "curve", [curve(x, kde_on(x, self.values_, self.bandwidth_))]


def curve(x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    return {
        "x": [float(f"{v:.{EXAMPLE_DIGITS}g}") for v in x],
        "y": [float(f"{v:.{EXAMPLE_DIGITS}g}") for v in y],
    }
