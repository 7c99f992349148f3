"""The family contract (collapselab.contract, `collapselab check-family`): every built-in family
keeps every clause, and a family that breaks one clause fails that check and no other.

The toy family below is also a minimal plug-in: a 1-D Gaussian with a batched path, outside the
registry, that keeps the whole contract."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
from pydantic import ConfigDict, Field
from typer.testing import CliRunner

from collapselab.contract import CHECK_NAMES, CHECKS, CheckResult, check_family, iter_checks
from collapselab.data import SampledData
from collapselab.models import FAMILIES, Degenerate, FamilyParams, ModelFamily, RunContext
from collapselab.models.base import NON_NEGATIVE, BatchedModel, ExamplesInfo, MetricInfo
from flows.cli import app
from tests.flows.processes import CLI, clean_env

ROOT = Path(__file__).resolve().parents[1]


# --- a toy family that keeps the contract --------------------------------------------------


class ToyParams(FamilyParams):
    family: Literal["contract-toy"] = "contract-toy"
    spread: float = Field(1.0, gt=0)


def _nll(X: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Mean Gaussian NLL of X (..., m, 1) under N(mean, var) per leading index."""
    squared = ((X[..., 0] - mean[..., None]) ** 2).mean(axis=-1)
    return 0.5 * (np.log(2 * np.pi * var) + squared / var)


class Toy(ModelFamily):
    name = "contract-toy"
    Params = ToyParams
    temperature_meaning = "variance times T"
    metrics_info: ClassVar[dict[str, MetricInfo]] = {
        "variance_ratio": MetricInfo(
            "Variance ratio",
            "fitted / true variance",
            "",
            "Fitted variance over the true variance",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            "Test NLL", "nats per point", "nats per point", "Held-out NLL", better="lower"
        ),
    }
    examples_info = ExamplesInfo(kind="density")

    def real_data(self) -> SampledData:
        spread = self.params.spread  # type: ignore[attr-defined]
        return SampledData(
            key=f"toy-normal({spread})", draw=lambda n, rng: spread * rng.standard_normal((n, 1))
        )

    def fit(self, X: np.ndarray) -> Toy:
        X = np.asarray(X, dtype=float)
        if X.var() < 1e-12:
            raise Degenerate("zero variance")
        self.mean_, self.var_ = np.array(X.mean()), np.array(X.var())
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        return self.mean_ + np.sqrt(self.var_ * temperature) * rng.standard_normal((n, 1))

    def score(self, X: np.ndarray) -> float:
        return float(_nll(np.asarray(X, dtype=float), self.mean_, self.var_))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        spread = self.params.spread  # type: ignore[attr-defined]
        return {"variance_ratio": float(self.var_) / spread**2, "test_nll": self.score(test)}

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]] | None:
        return "density", [{"mean": [float(self.mean_)], "cov": [[float(self.var_)]]}]


class ToyBatched(BatchedModel):
    def __init__(
        self, params: FamilyParams, *, contexts: list[RunContext], tests: list[np.ndarray]
    ) -> None:
        super().__init__(params, contexts=contexts, tests=tests)
        self.tests = np.stack(tests)

    def fit(self, X: np.ndarray) -> dict[int, str]:
        self.mean_, self.var_ = X[..., 0].mean(axis=1), X[..., 0].var(axis=1)
        return {int(r): "zero variance" for r in np.flatnonzero(self.var_ < 1e-12)}

    def sample(self, n, *, rngs, temperature=1.0) -> np.ndarray:
        scale = np.sqrt(self.var_ * temperature)
        draws = zip(self.mean_, scale, rngs, strict=True)
        return np.stack([m + s * rng.standard_normal((n, 1)) for m, s, rng in draws])

    def metrics(self, *, rngs) -> dict[str, np.ndarray]:
        spread = self.params.spread  # type: ignore[attr-defined]
        fits = zip(self.tests, self.mean_, self.var_, strict=True)
        nll = np.array([_nll(test, mean, var) for test, mean, var in fits])
        return {"variance_ratio": self.var_ / spread**2, "test_nll": nll}

    def keep(self, mask: np.ndarray) -> None:
        self.mean_, self.var_, self.tests = self.mean_[mask], self.var_[mask], self.tests[mask]
        self.contexts = [c for c, k in zip(self.contexts, mask, strict=True) if k]

    def examples(self, r: int, *, rng: np.random.Generator) -> tuple[str, list[Any]] | None:
        return "density", [{"mean": [float(self.mean_[r])], "cov": [[float(self.var_[r])]]}]


class BatchedToy(Toy):
    Batched = ToyBatched


# --- families that each break one clause ---------------------------------------------------


class ReseedsTheGlobalGenerator(Toy):
    def sample(self, n, *, rng, temperature=1.0):
        np.random.seed(0)  # the bug: every sample resets everyone's global stream
        return super().sample(n, rng=rng, temperature=temperature)


class DrawsFromTheGlobalGenerator(Toy):
    def sample(self, n, *, rng, temperature=1.0):
        rng.standard_normal()  # draws from the given generator too, but not only
        return self.mean_ + np.sqrt(self.var_ * temperature) * np.random.standard_normal((n, 1))


class HiddenFixedSeed(Toy):
    def sample(self, n, *, rng, temperature=1.0):
        return super().sample(n, rng=np.random.default_rng(0), temperature=temperature)


class HiddenEntropy(Toy):
    def sample(self, n, *, rng, temperature=1.0):
        return super().sample(n, rng=np.random.default_rng(), temperature=temperature)


class FitReturnsNone(Toy):
    def fit(self, X):
        super().fit(X)


class MetricWithoutMetadata(Toy):
    def metrics(self, test, *, rng):
        return {**super().metrics(test, rng=rng), "mean_shift": float(self.mean_)}


class ExamplesNotJson(Toy):
    def examples(self, *, rng):
        return "density", [{"mean": self.mean_.reshape(1), "cov": self.var_.reshape(1, 1)}]


class CurveOfRaggedPoints(Toy):
    examples_info = ExamplesInfo(kind="curve", x_label="x", y_label="density")

    def examples(self, *, rng):
        return "curve", [{"x": [0.0, 1.0, 2.0], "y": [0.1, float(self.var_)]}]


class CurveTruthIsNotACurve(Toy):
    examples_info = ExamplesInfo(kind="curve", x_label="x", y_label="density")

    @classmethod
    def examples_truth(cls, params):
        return [0.5, 0.5]  # the ranks' format, not a curve's

    def examples(self, *, rng):
        return "curve", [{"x": [0.0, 1.0], "y": [0.0, float(self.var_)]}]


class SharesNotSummingToOne(Toy):
    examples_info = ExamplesInfo(kind="shares", y_label="points")

    def examples(self, *, rng):
        return "shares", [{"labels": ["left", "right"], "shares": [0.5, 0.6]}]


class LooseParams(ToyParams):
    model_config = ConfigDict(extra="allow", frozen=True)


class AcceptsUnknownParameters(Toy):
    Params = LooseParams


class RaisesAnotherErrorOnConstantData(Toy):
    def fit(self, X):
        if np.ptp(X) == 0:
            raise ValueError("all points are equal")  # the bug: not Degenerate
        return super().fit(X)


class FitsNaNOnConstantData(Toy):
    def fit(self, X):
        with np.errstate(all="ignore"):
            return super().fit(X / np.ptp(X))  # 0 / 0: NaN that the variance test lets through


class BatchedOffByAMillionth(ToyBatched):
    def metrics(self, *, rngs):
        values = super().metrics(rngs=rngs)
        return {**values, "variance_ratio": values["variance_ratio"] * (1 + 1e-6)}


class BatchedPathDisagrees(BatchedToy):
    Batched = BatchedOffByAMillionth


class UnderestimatesItsMemory(Toy):
    @classmethod
    def working_bytes(cls, params, *, train_points, n, test_size):
        return 100


BROKEN = [
    (ReseedsTheGlobalGenerator, "given-generator"),
    (DrawsFromTheGlobalGenerator, "given-generator"),
    (HiddenFixedSeed, "given-generator"),
    (FitReturnsNone, "fit-returns-model"),
    (MetricWithoutMetadata, "metric-metadata"),
    (ExamplesNotJson, "examples-json"),
    (CurveOfRaggedPoints, "examples-json"),
    (CurveTruthIsNotACurve, "examples-json"),
    (SharesNotSummingToOne, "examples-json"),
    (AcceptsUnknownParameters, "parameters-validated"),
    (RaisesAnotherErrorOnConstantData, "degenerate-fit"),
    (FitsNaNOnConstantData, "degenerate-fit"),
    (BatchedPathDisagrees, "batched-path"),
    (UnderestimatesItsMemory, "memory-estimate"),
]


def failed(results: list[CheckResult]) -> dict[str, str]:
    return {result.name: result.detail for result in results if not result.passed}


# --- the built-in families keep every clause ------------------------------------------------


@cache
def built_in_checks(family: str) -> dict[str, Any]:
    """Each check of a built-in family, sharing one load of its real data."""
    return {check.name: run for check, run in iter_checks(FAMILIES[family])}


@pytest.mark.parametrize("check", CHECK_NAMES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_built_in_family_keeps_the_contract(family, check):
    result = built_in_checks(family)[check]()
    assert result.name == check
    assert result.passed, f"{family}: {check}: {result.detail}"
    assert result.detail and "\n" not in result.detail


@pytest.mark.parametrize("family", [Toy, BatchedToy], ids=["per-run", "batched"])
def test_the_toy_plug_in_keeps_the_contract_and_leaves_the_registry_alone(family):
    assert "contract-toy" not in FAMILIES
    results = {result.name: result for result in check_family(family)}
    assert list(results) == list(CHECK_NAMES)
    assert all(result.passed for result in results.values()), results
    batched = "6 batched runs equal the per-run path" in results["batched-path"].detail
    assert batched == (family is BatchedToy)
    assert "contract-toy" not in FAMILIES  # registered only while the engine ran it


@pytest.mark.parametrize(("family", "broken"), BROKEN, ids=[cls.__name__ for cls, _ in BROKEN])
def test_a_family_that_breaks_one_clause_fails_exactly_that_check(family, broken):
    problems = failed(check_family(family))
    assert list(problems) == [broken], problems
    assert "\n" not in problems[broken]


def test_a_hidden_random_source_is_caught_as_nondeterminism_too():
    problems = failed(check_family(HiddenEntropy))
    assert set(problems) == {"given-generator", "determinism"}
    assert "differs between two identical calls" in problems["given-generator"]


def test_failures_say_what_is_wrong():
    assert (
        "changed numpy's global random state"
        in failed(check_family(ReseedsTheGlobalGenerator))["given-generator"]
    )
    assert (
        "drew nothing from the Generator"
        in failed(check_family(HiddenFixedSeed))["given-generator"]
    )
    assert "fit returned None" in failed(check_family(FitReturnsNone))["fit-returns-model"]
    assert (
        "['mean_shift'] without metadata"
        in failed(check_family(MetricWithoutMetadata))["metric-metadata"]
    )
    assert "not JSON serializable" in failed(check_family(ExamplesNotJson))["examples-json"]
    assert (
        "curve examples are malformed: x has 3 values and y 2"
        in failed(check_family(CurveOfRaggedPoints))["examples-json"]
    )
    assert (
        "examples_truth is not a curve: an item must be"
        in failed(check_family(CurveTruthIsNotACurve))["examples-json"]
    )
    assert (
        "shares examples are malformed: shares sum to 1.1"
        in failed(check_family(SharesNotSummingToOne))["examples-json"]
    )


def test_the_checks_leave_the_global_random_state_as_they_found_it():
    np.random.seed(42)
    state = np.random.get_state()[1].copy()
    check_family(ReseedsTheGlobalGenerator)
    check_family(Toy)
    assert np.array_equal(np.random.get_state()[1], state)


def test_a_check_runs_alone_on_given_parameters():
    by_name = {check.name: check for check in CHECKS}
    result = by_name["memory-estimate"](Toy, params={"spread": 3.0})
    assert result.passed, result.detail
    with pytest.raises(ValueError, match=r"^contract-toy: spread: Input should be greater than 0"):
        check_family(Toy, params={"spread": -1})


# --- the command ----------------------------------------------------------------------------


def test_the_command_prints_each_check_and_passes_a_good_family():
    result = CliRunner().invoke(app, ["check-family", "gaussian", "--param", "dim=2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", name] for name in CHECK_NAMES]
    assert lines[-1] == f"gaussian(dim=2): all {len(CHECK_NAMES)} checks pass"


def test_the_command_as_json():
    result = CliRunner().invoke(app, ["check-family", "kde", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["family"] == "kde" and document["passed"] is True
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    assert all(c["summary"] and c["detail"] for c in document["checks"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no.such.module:Family"], "cannot import 'no.such.module'"),
        (["not-a-family"], "unknown model family 'not-a-family'"),
        (["gaussian", "--param", "dim"], "write KEY=VALUE"),
        (["gaussian", "--param", "dim=[1"], "is not a YAML value"),
        (["gaussian", "--param", "dims=2"], "gaussian: dims: Extra inputs are not permitted"),
    ],
)
def test_an_unusable_family_or_parameter_is_one_line(args, message):
    result = CliRunner().invoke(app, ["check-family", *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "code"), [("ReseedsTheGlobalGenerator", 1), ("Toy", 0)], ids=["broken", "good"]
)
def test_the_installed_command_on_a_plug_in_class(tmp_path, family, code):
    env = {**clean_env(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [CLI, "check-family", f"tests.test_family_contract:{family}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == code, done.stdout + done.stderr[-3000:]
    last = done.stdout.splitlines()[-1]
    if code:
        assert "FAIL  given-generator" in done.stdout
        assert last == "contract-toy: 1 of 10 checks FAIL: given-generator"
    else:
        assert last == "contract-toy: all 10 checks pass"
