"""How each metric is presented: title, axis label, caption sentence, y scale and domain.

The domain is what the metric can take (a share lies in [0, 1], a distance is never negative):
figures clip their confidence bands to it, so a band never promises a value the metric cannot have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

#: Domains used below: at least 0, and a share.
NON_NEGATIVE = (0.0, None)
SHARE = (0.0, 1.0)


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is presented: short title, y-axis label, caption sentence, y scale, domain."""

    title: str
    axis_label: str
    description: str
    #: `auto-log`: log scale when every drawn mean is positive and they span more than two decades.
    y_scale: Literal["linear", "log", "auto-log"] = "linear"
    #: A value drawn as a dotted reference line (the value that means "no collapse").
    reference: float | None = None
    #: (lower, upper) bounds of the values the metric can take; None = unbounded on that side.
    domain: tuple[float | None, float | None] = (None, None)


METRICS: dict[str, MetricInfo] = {
    "mean_sq_error": MetricInfo(
        "Error of the fitted mean",
        "‖μ_t − μ‖²",
        "Squared error of the fitted mean, ||mu_t - mu||^2",
        y_scale="log",
        domain=NON_NEGATIVE,
    ),
    "variance_ratio": MetricInfo(
        "Variance ratio",
        "tr Σ_t / tr Σ",
        "Fitted variance / true variance (trace ratio); 1 = no collapse",
        y_scale="auto-log",
        reference=1.0,
        domain=NON_NEGATIVE,
    ),
    "wasserstein2_distance": MetricInfo(
        "W₂ distance to the truth",
        "W₂(model t, truth)",
        "2-Wasserstein distance W2 (not squared) between the fitted and the true Gaussian",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "test_nll": MetricInfo(
        "Held-out negative log-likelihood",
        "NLL (nats per point)",
        "Mean negative log-likelihood of held-out real data (nats per point); discrete families "
        "score a token the model cannot produce with a small floor, so it stays finite",
        y_scale="auto-log",
    ),
    "tail_mass_ratio": MetricInfo(
        "Tail mass ratio",
        "tail mass / true tail mass",
        "Model's mass beyond 2 true sd / the truth's; 1 = tails intact, 0 = tails lost",
        reference=1.0,
        domain=NON_NEGATIVE,
    ),
    "weight_sq_error": MetricInfo(
        "Error of the fitted weights",
        "‖w_t − w*‖²",
        "Squared error of the least-squares weights, ||w_t - w*||^2",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "test_mse": MetricInfo(
        "Test error against noise-free labels",
        "MSE",
        "Mean squared error of predictions on held-out rows against the noise-free labels x.w*",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "vocab_survival": MetricInfo(
        "Vocabulary survival",
        "share of words alive",
        "Share of the true vocabulary the model can still produce; 1 = nothing forgotten",
        reference=1.0,
        domain=SHARE,
    ),
    "unseen_test_rate": MetricInfo(
        "Held-out tokens the model cannot produce",
        "share of held-out tokens",
        "Share of held-out real tokens whose word has probability zero under the model; 0 = "
        "every held-out word can still be produced",
        reference=0.0,
        domain=SHARE,
    ),
    "gini_simpson": MetricInfo(
        "Gini-Simpson diversity",
        "Σ p(1 − p)",
        "Gini-Simpson diversity of the model, the chance two draws differ",
        domain=SHARE,
    ),
    "entropy": MetricInfo(
        "Entropy", "nats", "Entropy of the model's distribution (nats)", domain=NON_NEGATIVE
    ),
    "lost_mass": MetricInfo(
        "Lost probability mass",
        "true mass on lost words",
        "True probability mass on words the model can no longer produce; 0 = nothing lost",
        reference=0.0,
        domain=SHARE,
    ),
    "kl_truth_model": MetricInfo(
        "KL(truth ‖ model)",
        "nats",
        "Kullback-Leibler divergence from the truth to the model, scored with the same floor as "
        "the held-out NLL: finite, and a lost word adds its true mass times log(its true "
        "probability / floor)",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "rarest_rank": MetricInfo(
        "Rarest surviving word",
        "true frequency rank",
        "True frequency rank of the rarest word the model can still produce: the tail's reach",
        domain=(1.0, None),
    ),
    "class_diversity": MetricInfo(
        "Class diversity of samples",
        "entropy of predicted digits (nats)",
        "Entropy of a real-data classifier's labels on the samples; log 10 = all digits equally "
        "common, lower = digits come to look alike",
        domain=(0.0, math.log(10)),
    ),
    "knn_precision": MetricInfo(
        "k-NN precision (fidelity)",
        "precision",
        "Share of samples inside the k-NN balls of held-out real digits (Kynkaanniemi et al.)",
        domain=SHARE,
    ),
    "knn_recall": MetricInfo(
        "k-NN recall (coverage)",
        "recall",
        "Share of held-out real digits inside the k-NN balls of the samples (Kynkaanniemi et al.)",
        domain=SHARE,
    ),
    "frechet_distance_squared": MetricInfo(
        "Squared Frechet distance",
        "squared Frechet distance",
        "Squared Frechet distance (as FID reports it) between samples and held-out real digits "
        "in a fixed feature space",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "latent_spread": MetricInfo(
        "Latent spread",
        "spread / real spread",
        "Spread of the samples along the real digits' main directions, relative to the real "
        "digits' own (Shumailov's VAE latent std, on CPU); 1 = as diverse as real data",
        reference=1.0,
        domain=NON_NEGATIVE,
    ),
    "component_std_min": MetricInfo(
        "Narrowest component",
        "standard deviation",
        "Standard deviation of the narrowest component",
        domain=NON_NEGATIVE,
    ),
    "component_std_max": MetricInfo(
        "Widest component",
        "standard deviation",
        "Standard deviation of the widest component",
        domain=NON_NEGATIVE,
    ),
    "component_std_mean": MetricInfo(
        "Mean component spread",
        "standard deviation",
        "Mean standard deviation of the fitted mixture's components (Shumailov: 0.9 -> 0.01)",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "l2_distance": MetricInfo(
        "L2 distance to the truth",
        "√∫(p − q)²",
        "Closed-form L2 distance between the fitted and the true mixture densities",
        y_scale="auto-log",
        domain=NON_NEGATIVE,
    ),
    "train_variance": MetricInfo(
        "Training-sample variance",
        "variance per dimension",
        "ML variance per dimension of the training sample; a fixed-bandwidth KDE diffuses "
        "towards (n - 1) h^2",
        domain=NON_NEGATIVE,
    ),
    "test_perplexity": MetricInfo(
        "Perplexity of held-out real text",
        "perplexity",
        "Perplexity of held-out real sentences under the model (per token, </s> included)",
        y_scale="auto-log",
        domain=(1.0, None),
    ),
    "distinct_2": MetricInfo(
        "Distinct bigrams",
        "distinct-2",
        "Distinct bigrams / all bigrams in sampled text",
        domain=SHARE,
    ),
    "vocab_size": MetricInfo(
        "Vocabulary size",
        "word types",
        "Word types the fitted model can generate",
        domain=NON_NEGATIVE,
    ),
    "repetition_rate": MetricInfo(
        "Repetition rate",
        "share of repeated tokens",
        "Share of sampled tokens repeating one of the 4 tokens before them",
        domain=SHARE,
    ),
    "sentence_length": MetricInfo(
        "Sentence length", "tokens", "Mean tokens per sampled sentence", domain=NON_NEGATIVE
    ),
    "sample_nll_real": MetricInfo(
        "Improbability of generated text",
        "NLL per token under real-data model",
        "Mean NLL per token of the model's samples under the same model fitted on real data "
        "(Shumailov's 'improbable text')",
        domain=NON_NEGATIVE,
    ),
    "real_fraction": MetricInfo(
        "Real share of the training set",
        "real fraction",
        "Share of the training set that is real data",
        domain=SHARE,
    ),
    "train_size": MetricInfo(
        "Training-set size",
        "points",
        "Training-set size (points)",
        domain=NON_NEGATIVE,
    ),
}


def describe_metric(name: str) -> MetricInfo:
    """The presentation of a metric; an unknown metric is shown under its raw name."""
    return METRICS.get(name) or MetricInfo(name, name, name)


def metric_order(names: Iterable[str]) -> list[str]:
    """Known metrics in the order of METRICS (most telling first), then the rest by name."""
    present = set(names)
    return [m for m in METRICS if m in present] + sorted(present - METRICS.keys())
