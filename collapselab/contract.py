"""The family contract: what every model family must do for the chain, the engine, the budget and
the report to trust it, checked on any family (built in or a plug-in), like scikit-learn's
`check_estimator`.

Each check is one small experiment on the family's default (or given) parameters with a few
hundred points of its own real data, so a whole family is checked in seconds:
`check_family(cls)` runs them all, `iter_checks(cls)` hands them out one at a time (the test
suite parametrizes over family x check), `collapselab check-family` prints them. The checks'
seeds are constants: a check is a fixed experiment, the same on every machine.

Checks that perturb numpy's or Python's global random state (to show a family does not read it)
put it back as it was, so running the contract changes nothing around it.
"""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, get_args, get_type_hints

import numpy as np
from pydantic import ValidationError

from collapselab.models import FAMILIES, Degenerate, FamilyParams, ModelFamily, RunContext
from collapselab.models.base import (
    GENERIC_METRICS,
    Better,
    CalibrationCells,
    ExamplesInfo,
    MetricInfo,
)

if TYPE_CHECKING:
    from collapselab.config import RunSpec
    from collapselab.strategies import StrategyParams

#: Training points, held-out points and samples of every check: enough for every built-in
#: family's fit and for a memory estimate to be about data rather than fixed overheads.
POINTS = 200
TEST_POINTS = 200
#: The batched check's tiny grid: replicates and generations of each cell, points a generation.
BATCH_REPLICATES = 3
BATCH_GENERATIONS = 3
BATCH_POINTS = 40
#: The batched path must give the per-run numbers to this relative tolerance (tests/test_engine).
RTOL, ATOL = 1e-9, 1e-12
#: Seeds of the checks' own streams: the real data, samples, Monte Carlo metrics, examples.
DATA_SEED, SAMPLE_SEED, METRIC_SEED, EXAMPLE_SEED = 20_240_601, 1, 2, 3
#: A sampling temperature other than 1, so the tempered path is exercised too.
COLD = 0.7


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `detail` is one line saying what was found (why it failed)."""

    name: str
    passed: bool
    detail: str


class CheckFailed(Exception):
    """Raised inside a check with the one-line reason it fails."""


class _Subject:
    """The family under check, its validated parameters, and a fixed slice of its real data
    (loaded on first use: the parameter check needs none)."""

    def __init__(self, cls: type[ModelFamily], params: FamilyParams) -> None:
        self.cls = cls
        self.params = params

    @cached_property
    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """(training points, held-out test points) of the family's real data."""
        real = self.cls(self.params).real_data()
        stream = real.open(n_test=TEST_POINTS, seed=np.random.SeedSequence(DATA_SEED))
        return stream.take(POINTS), stream.test

    @property
    def train(self) -> np.ndarray:
        return self.data[0]

    @property
    def test(self) -> np.ndarray:
        return self.data[1]

    def model(self) -> ModelFamily:
        """A fresh unfitted model whose context holds copies of the data (nothing shared)."""
        context = RunContext(r0=self.train.copy())
        return self.cls(self.params, context=context)

    def fitted(self) -> ModelFamily:
        """A model fitted on the training points; `fit`'s return value is not trusted here (one
        check alone judges it), so a family whose `fit` returns None fails only that check."""
        model = self.model()
        model.fit(self.train.copy())
        return model


@dataclass(frozen=True)
class Check:
    """One clause of the contract: `run` returns a one-line detail or raises CheckFailed."""

    name: str
    #: What the check asks of a family, in one line (README and `--format json` quote it).
    summary: str
    run: Callable[[_Subject], str]

    def __call__(
        self, cls: type[ModelFamily], *, params: Mapping[str, Any] | FamilyParams | None = None
    ) -> CheckResult:
        return _run_one(self, _Subject(cls, family_params(cls, params)))


def family_params(
    cls: type[ModelFamily], params: Mapping[str, Any] | FamilyParams | None = None
) -> FamilyParams:
    """`cls`'s parameters from a mapping (its defaults when None); ValueError of one line when
    they are not valid, naming the field."""
    if isinstance(params, FamilyParams):
        if not isinstance(params, cls.Params):
            raise ValueError(f"{cls.name}: parameters of family {params.family!r} given")
        return params
    try:
        return cls.Params(**{"family": cls.name, **(params or {})})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "parameters"
        raise ValueError(f"{cls.name}: {where}: {error['msg']}") from None


def _run_one(check: Check, subject: _Subject) -> CheckResult:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        detail, passed = check.run(subject), True
    except CheckFailed as exc:
        detail, passed = str(exc), False
    except Exception as exc:  # the family raised where the contract expected an answer
        detail, passed = f"raised {_one_line(exc)}", False
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return CheckResult(check.name, passed, detail)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0][:300] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- helpers --------------------------------------------------------------------------------


def _equal(a: Any, b: Any) -> bool:
    """Exact equality of nested arrays, dicts, lists and numbers (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype == object:
            return all(_equal(x, y) for x, y in zip(a.ravel(), b.ravel(), strict=True))
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _close(a: Any, b: Any) -> bool:
    """Like `_equal`, numbers within RTOL (ATOL near 0)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    numbers = (float, int, np.floating, np.integer)
    if isinstance(a, numbers) and isinstance(b, numbers):
        x, y = float(a), float(b)
        return x == y or math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL)
    return _equal(a, b)


def _global_states() -> tuple[Any, Any]:
    """numpy's legacy global generator and Python's `random`, comparable with ==."""
    state: Any = np.random.get_state()  # the legacy tuple (numpy's stubs also allow a dict)
    name, keys, position, has_gauss, cached = state
    return (name, keys.tobytes(), position, has_gauss, cached), random.getstate()


def _scramble_global_random(seed: int) -> None:
    """Put numpy's and Python's global generators at a state of `seed`'s, mid-stream."""
    # deliberately set, never read for a result: the contract shows the family ignores it
    legacy = np.random.RandomState(seed)
    legacy.random_sample(3)
    np.random.set_state(legacy.get_state())
    random.seed(seed)
    random.random()


def _guarded(what: str, call: Callable[[], Any]) -> Any:
    """`call()`, failing the check when it touches numpy's or Python's global random state."""
    numpy_before, python_before = _global_states()
    result = call()
    numpy_after, python_after = _global_states()
    if numpy_after != numpy_before:
        raise CheckFailed(
            f"{what} changed numpy's global random state (np.random.seed or a draw from "
            "np.random.*): draw only from the Generator passed in"
        )
    if python_after != python_before:
        raise CheckFailed(
            f"{what} changed the state of Python's `random` module: draw only from the "
            "Generator passed in"
        )
    return result


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _fitted_state(model: ModelFamily, before: set[str]) -> list[str]:
    """Public attributes ending in '_' that `fit` added: the fitted state by convention."""
    return sorted(
        name
        for name in vars(model)
        if name not in before and name.endswith("_") and not name.startswith("_")
    )


def _has_nan(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and bool(np.isnan(value).any())
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int | np.floating | np.integer) and not isinstance(
        value, bool | np.bool_
    )


# --- the checks -----------------------------------------------------------------------------


def _fit_returns_model(subject: _Subject) -> str:
    model = subject.model()
    before = set(vars(model))
    X = subject.train.copy()
    returned = model.fit(X)
    if returned is not model:
        got = "None" if returned is None else f"a {type(returned).__name__}"
        raise CheckFailed(f"fit returned {got}, not the model itself (end fit with `return self`)")
    fitted = _fitted_state(model, before)
    if not fitted:
        raise CheckFailed("fit set no fitted state (public attributes ending in '_')")
    if not _equal(X, subject.train):
        raise CheckFailed("fit changed its training array in place (the chain keeps it)")
    shown = ", ".join(fitted[:4]) + (", ..." if len(fitted) > 4 else "")
    return f"fit returns the model and sets {shown}"


def _only_given_generator(subject: _Subject) -> str:
    n, test = POINTS, subject.test

    def results(global_seed: int) -> dict[str, Any]:
        _scramble_global_random(global_seed)
        model = subject.model()
        _guarded("fit", lambda: model.fit(subject.train.copy()))
        out: dict[str, Any] = {}
        for temperature in (1.0, COLD):
            draw = partial(model.sample, n, rng=_rng(SAMPLE_SEED), temperature=temperature)
            out[f"sample(T={temperature:g})"] = _guarded("sample", draw)
            _scramble_global_random(global_seed + 1)  # draws between calls change nothing
        out["metrics"] = _guarded("metrics", lambda: model.metrics(test, rng=_rng(METRIC_SEED)))
        out["examples"] = _guarded("examples", lambda: model.examples(rng=_rng(EXAMPLE_SEED)))
        out["score"] = _guarded("score", lambda: model.score(test))
        return out

    first, repeated, other_global = results(11), results(11), results(977)
    for part, value in first.items():
        if not _equal(value, repeated[part]):
            raise CheckFailed(
                f"{part} differs between two identical calls with the same seed: a random "
                "source other than the Generator passed in"
            )
        if not _equal(value, other_global[part]):
            raise CheckFailed(
                f"{part} changed with numpy's or Python's global random state: draw only from "
                "the Generator passed in"
            )
    model = subject.fitted()
    rng = _rng(SAMPLE_SEED)
    untouched = _rng(SAMPLE_SEED).bit_generator.state
    drawn = model.sample(n, rng=rng)
    if rng.bit_generator.state == untouched:
        raise CheckFailed("sample drew nothing from the Generator passed in (a hidden seed?)")
    if _equal(model.sample(n, rng=_rng(SAMPLE_SEED + 100)), drawn):
        raise CheckFailed("sample gave the same points for another seed (a hidden fixed seed)")
    return "fit, sample, metrics, examples and score leave the global random state alone"


def _shapes_and_dtypes(subject: _Subject) -> str:
    train = subject.train
    shape, kind = train.shape[1:], train.dtype.kind
    model = subject.fitted()
    n = len(train)  # the chain draws as many points as R0 has (a fixed design allows no other)
    for temperature in (1.0, COLD):
        points = model.sample(n, rng=_rng(SAMPLE_SEED), temperature=temperature)
        where = f"sample({n}, temperature={temperature:g})"
        if not isinstance(points, np.ndarray):
            raise CheckFailed(f"{where} returned a {type(points).__name__}, not an array")
        if points.shape != (n, *shape):
            raise CheckFailed(f"{where} has shape {points.shape}, expected {(n, *shape)}")
        if points.dtype.kind != kind:
            raise CheckFailed(
                f"{where} has dtype {points.dtype}, expected the real data's kind ({train.dtype})"
            )
        if kind in "fc" and not np.isfinite(points).all():
            raise CheckFailed(f"{where} holds NaN or infinite values")
    score = model.score(subject.test)
    if not _is_number(score) or math.isnan(score):
        raise CheckFailed(f"score returned {score!r}, not a number")
    refit = subject.model()
    with suppress(Degenerate):  # the chain fits each generation on the last one's samples
        refit.fit(model.sample(n, rng=_rng(SAMPLE_SEED)))
    return f"samples are ({'n' if not shape else 'n, ' + ', '.join(map(str, shape))}) {kind!r}"


def _determinism(subject: _Subject) -> str:
    def results() -> dict[str, Any]:
        _scramble_global_random(5)
        model = subject.fitted()
        return {
            "metrics": model.metrics(subject.test, rng=_rng(METRIC_SEED)),
            "metrics again": model.metrics(subject.test, rng=_rng(METRIC_SEED)),
            "examples": model.examples(rng=_rng(EXAMPLE_SEED)),
            "samples": model.sample(POINTS, rng=_rng(SAMPLE_SEED), temperature=COLD),
            "score": model.score(subject.test),
        }

    first, second = results(), results()
    if not _equal(first["metrics"], first["metrics again"]):
        raise CheckFailed("metrics differ when called twice with the same seed (state kept)")
    for part, value in first.items():
        if not _equal(value, second[part]):
            raise CheckFailed(f"two fresh models on the same data and seeds give different {part}")
    return "two fresh models give the same samples, metrics, examples and score"


_Y_SCALES = ("linear", "log", "auto-log")
_EXAMPLE_KINDS: tuple[str, ...] = get_args(get_type_hints(ExamplesInfo)["kind"])


def _metric_metadata(subject: _Subject) -> str:
    cls = subject.cls
    info = getattr(cls, "metrics_info", None)
    if not isinstance(info, Mapping) or not info:
        raise CheckFailed("metrics_info is missing: declare a MetricInfo for every metric")
    if tuple(cls.metric_names) != tuple(info):
        raise CheckFailed("metric_names is not metrics_info's keys in order")
    clash = sorted(set(info) & set(GENERIC_METRICS))
    if clash:
        raise CheckFailed(f"metrics_info redefines {clash}, which every generation records")
    for name, meta in info.items():
        _check_metric_info(name, meta)
    if not isinstance(cls.temperature_meaning, str) or not cls.temperature_meaning.strip():
        raise CheckFailed("temperature_meaning is empty: say what temperature does")
    if not isinstance(cls.results_version, int) or cls.results_version < 1:
        raise CheckFailed(f"results_version must be an integer >= 1, got {cls.results_version!r}")
    model = subject.fitted()
    values = model.metrics(subject.test, rng=_rng(METRIC_SEED))
    missing, extra = sorted(set(info) - set(values)), sorted(set(values) - set(info))
    if missing or extra:
        parts = [f"{extra} without metadata" if extra else "", f"not {missing}" if missing else ""]
        found = ", ".join(part for part in parts if part)
        raise CheckFailed(f"metrics() returns {found}: metrics_info describes what it returns")
    for name, value in values.items():
        if not _is_number(value) or math.isnan(value):
            raise CheckFailed(f"metric {name} is {value!r}, not a number")
        lower, upper = info[name].domain
        slack = 1e-9 * (1.0 + abs(float(value)))
        if (lower is not None and value < lower - slack) or (
            upper is not None and value > upper + slack
        ):
            raise CheckFailed(
                f"metric {name} = {value!r} is outside its domain {info[name].domain}"
            )
    for threshold in cls.collapse_indicators:
        if getattr(threshold, "metric", None) not in info:
            raise CheckFailed(f"collapse indicator {threshold!r} names no metric of metrics_info")
    calibration = cls.calibration
    if calibration is not None and (
        not isinstance(calibration, CalibrationCells) or calibration.ci_replicates < 1
    ):
        raise CheckFailed("calibration must be CalibrationCells with ci_replicates >= 1, or None")
    _check_examples_info(cls.examples_info, model.examples(rng=_rng(EXAMPLE_SEED)))
    indicators = len(cls.collapse_indicators)
    return f"{len(info)} metrics described, {indicators} collapse indicator(s) name them"


def _check_metric_info(name: str, meta: Any) -> None:
    if not isinstance(meta, MetricInfo):
        raise CheckFailed(f"metrics_info[{name!r}] is a {type(meta).__name__}, not a MetricInfo")
    for attribute in ("title", "axis_label", "meaning"):
        text = getattr(meta, attribute)
        if not isinstance(text, str) or not text.strip():
            raise CheckFailed(f"metrics_info[{name!r}].{attribute} is empty")
    if not isinstance(meta.unit, str):
        raise CheckFailed(f"metrics_info[{name!r}].unit must be a string ('' for a pure ratio)")
    if meta.better not in get_args(Better):
        raise CheckFailed(f"metrics_info[{name!r}].better is {meta.better!r}")
    if meta.y_scale not in _Y_SCALES:
        raise CheckFailed(f"metrics_info[{name!r}].y_scale is {meta.y_scale!r}")
    lower, upper = meta.domain
    if lower is not None and upper is not None and not lower < upper:
        raise CheckFailed(f"metrics_info[{name!r}].domain {meta.domain} is empty")
    if meta.better == "reference" and meta.reference is None:
        raise CheckFailed(f"metrics_info[{name!r}] is better near a reference it does not give")
    if meta.reference is not None and (
        (lower is not None and meta.reference < lower)
        or (upper is not None and meta.reference > upper)
    ):
        raise CheckFailed(
            f"metrics_info[{name!r}].reference {meta.reference} is outside its domain {meta.domain}"
        )


def _check_examples_info(info: ExamplesInfo | None, shown: Any) -> None:
    if info is None:
        if shown is not None:
            raise CheckFailed("examples() returns examples but examples_info is None")
        return
    if not isinstance(info, ExamplesInfo) or info.kind not in _EXAMPLE_KINDS:
        raise CheckFailed(f"examples_info must be an ExamplesInfo of kind {_EXAMPLE_KINDS}")
    if shown is None:
        raise CheckFailed(f"examples_info declares {info.kind!r} examples but examples() is None")
    if not (isinstance(shown, tuple) and len(shown) == 2 and isinstance(shown[1], list)):
        raise CheckFailed("examples() must return (kind, list of items) or None")
    kind, items = shown
    if kind != info.kind:
        raise CheckFailed(f"examples() returns {kind!r} examples, examples_info says {info.kind!r}")
    if not items:
        raise CheckFailed("examples() returns no items")
    low, high = info.pixel_range
    if info.kind == "image" and (not low < high or info.mosaic_side < 1):
        raise CheckFailed("examples_info's pixel_range must increase and mosaic_side be >= 1")


def _examples_json(subject: _Subject) -> str:
    shown = subject.fitted().examples(rng=_rng(EXAMPLE_SEED))
    if shown is None:
        return "keeps no examples"
    try:
        text = json.dumps(list(shown), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckFailed(
            f"examples are not JSON the store can keep ({_one_line(exc)}): convert arrays with "
            ".tolist() and keep numbers finite"
        ) from None
    kind, items = json.loads(text)  # as the report reads them back from the store
    problem = examples_format_problem(kind, items)
    if problem is not None:
        raise CheckFailed(f"{kind} examples are malformed: {problem}")
    if kind == "curve":
        truth = subject.cls.examples_truth(subject.params)
        problem = None if truth is None else curve_problem(_json_round_trip(truth))
        if problem is not None:
            raise CheckFailed(f"examples_truth is not a curve: {problem}")
    return f"{len(items)} {kind} example(s), {len(text)} characters of JSON"


def _json_round_trip(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists), or a marker naming why it is not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return _NotJson(_one_line(exc))


@dataclass(frozen=True)
class _NotJson:
    reason: str


# --- the formats of the generic example kinds (the report draws what these accept) -----------

#: How far from 1 the shares of a "shares" item may sum (rounding of the family's arithmetic).
SHARES_TOLERANCE = 1e-6


def examples_format_problem(kind: str, items: Any) -> str | None:
    """Why `items` (parsed JSON, as stored) are not examples of the generic `kind`, or None.

    curve: exactly one item {"x": [...], "y": [...]} (see `curve_problem`). shares: exactly one
    item {"labels": [...], "shares": [...]}: distinct non-empty strings and as many numbers, each
    at least 0, summing to 1 within SHARES_TOLERANCE. The other kinds' items are the family's own
    format, not checked here."""
    if kind not in ("curve", "shares"):
        return None
    if not isinstance(items, list) or len(items) != 1:
        count = f"{len(items)} items" if isinstance(items, list) else type(items).__name__
        return f"expected a list of exactly one item (this model's {kind}), got {count}"
    return curve_problem(items[0]) if kind == "curve" else _shares_problem(items[0])


def curve_problem(value: Any) -> str | None:
    """Why `value` is not a curve {"x": [...], "y": [...]}, or None: exactly those two keys,
    lists of the same length (at least 2) of finite numbers, x never decreasing."""
    if isinstance(value, _NotJson):
        return f"not JSON ({value.reason})"
    problem = _keys_problem(value, ("x", "y"))
    if problem is not None:
        return problem
    for key in ("x", "y"):
        problem = _numbers_problem(value[key], key)
        if problem is not None:
            return problem
    if len(value["x"]) != len(value["y"]):
        return f"x has {len(value['x'])} values and y {len(value['y'])}"
    if len(value["x"]) < 2:
        return "a curve needs at least 2 points"
    if any(b < a for a, b in zip(value["x"], value["x"][1:], strict=False)):
        return "x decreases somewhere: give the points in increasing x"
    return None


def _shares_problem(value: Any) -> str | None:
    problem = _keys_problem(value, ("labels", "shares"))
    if problem is not None:
        return problem
    labels, shares = value["labels"], value["shares"]
    if not isinstance(labels, list) or not labels:
        return "labels must be a non-empty list of strings"
    if not all(isinstance(label, str) and label.strip() for label in labels):
        return "every label must be a non-empty string"
    if len(set(labels)) != len(labels):
        return "labels repeat: each part is named once"
    problem = _numbers_problem(shares, "shares")
    if problem is not None:
        return problem
    if len(shares) != len(labels):
        return f"{len(labels)} labels but {len(shares)} shares"
    if min(shares) < 0:
        return f"a share is negative ({min(shares)!r})"
    if abs(sum(shares) - 1.0) > SHARES_TOLERANCE:
        return f"shares sum to {sum(shares)!r}, not 1"
    return None


def _keys_problem(value: Any, keys: tuple[str, ...]) -> str | None:
    wanted = "{" + ", ".join(f'"{key}": [...]' for key in keys) + "}"
    if not isinstance(value, dict):
        return f"an item must be {wanted}, got {type(value).__name__}"
    if sorted(value) != sorted(keys):
        found = ", ".join(map(repr, sorted(map(str, value)))) or "no keys"
        return f"an item must be {wanted}, got keys {found}"
    return None


def _numbers_problem(values: Any, key: str) -> str | None:
    if not isinstance(values, list):
        return f"{key} must be a list of numbers, got {type(values).__name__}"
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key} holds {type(value).__name__} values, not only numbers"
        if not math.isfinite(value):
            return f"{key} holds {value!r}: numbers must be finite"
    return None


class _WrongType:
    """A value no typed parameter accepts."""

    def __repr__(self) -> str:
        return "<wrong type>"


def _parameters_validated(subject: _Subject) -> str:
    cls, params = subject.cls, subject.params
    Params = cls.Params
    if not (isinstance(Params, type) and issubclass(Params, FamilyParams)):
        raise CheckFailed("Params must subclass collapselab.models.FamilyParams")
    if Params.model_config.get("extra") != "forbid":
        raise CheckFailed("Params accept unknown fields: keep FamilyParams' extra='forbid'")
    if params.family != cls.name:
        raise CheckFailed(f"Params.family is {params.family!r}, the family's name {cls.name!r}")
    values = params.model_dump()

    def rejected(change: dict[str, Any], what: str) -> None:
        try:
            Params(**{**values, **change})
        except ValidationError as exc:
            messages = [str(error["msg"]) for error in exc.errors()]
            if any("\n" in message for message in messages):
                raise CheckFailed(f"{what}: the error message spans lines") from None
            return
        except Exception as exc:
            raise CheckFailed(f"{what} raised {_one_line(exc)}, not a ValidationError") from None
        raise CheckFailed(f"{what} was accepted")

    rejected({"not_a_parameter": 1}, "an unknown field")
    fields = [name for name in Params.model_fields if name != "family"]
    for name in fields:
        rejected({name: _WrongType()}, f"{name} of the wrong type")
    restored = Params.model_validate_json(params.model_dump_json())
    if restored != params:
        raise CheckFailed("parameters do not survive a JSON round trip (runs store them as JSON)")
    return f"unknown fields and wrong types rejected ({len(fields)} parameter(s))"


def _degenerate_fit(subject: _Subject) -> str:
    constant = np.repeat(subject.train[:1], POINTS, axis=0)
    model = subject.model()
    before = set(vars(model))
    try:
        model.fit(constant)
    except Degenerate as exc:
        message = str(exc)
        if not message.strip() or "\n" in message.strip():
            raise CheckFailed(
                "Degenerate's message must be one line (the run's error quotes it)"
            ) from None
        return f"a constant training set raises Degenerate ({message.strip()[:80]})"
    except Exception as exc:
        raise CheckFailed(
            f"fit on a constant training set raised {_one_line(exc)}: raise "
            "collapselab.models.Degenerate when a fit cannot define a model"
        ) from None
    for name in _fitted_state(model, before):
        if _has_nan(getattr(model, name)):
            raise CheckFailed(
                f"fit on a constant training set left NaN in {name}: raise Degenerate"
            )
    values = model.metrics(subject.test, rng=_rng(METRIC_SEED))
    bad = sorted(name for name, value in values.items() if not math.isfinite(value))
    if bad:
        raise CheckFailed(
            f"fit on a constant training set gives non-finite {bad}: raise Degenerate"
        )
    points = model.sample(POINTS, rng=_rng(SAMPLE_SEED))
    if _has_nan(points):
        raise CheckFailed("fit on a constant training set samples NaN: raise Degenerate")
    return "a constant training set fits, with finite metrics"


def _batched_equals_per_run(subject: _Subject) -> str:
    cls = subject.cls
    if cls.Batched is None:
        return "no batched path (Batched is None)"
    from collapselab import engine
    from collapselab.chain import FAILED, run_chain
    from collapselab.strategies import STRATEGIES

    strategies = [
        STRATEGIES["replace"].Params.model_validate({"name": "replace", "temperature": COLD}),
        STRATEGIES["accumulate"].Params.model_validate({"name": "accumulate"}),
    ]
    checked = 0
    with _registered(cls):
        for strategy in strategies:
            specs = [_spec(subject.params, strategy, r) for r in range(BATCH_REPLICATES)]
            if not engine.batches_cell(specs[0]):
                continue
            try:  # the engine's own batched path, without its fall-back to run_chain
                batched = engine.run_batched(specs)
            except Exception as exc:
                raise CheckFailed(
                    f"{strategy.label()}: the batched path raised {_one_line(exc)}"
                ) from None
            for spec, outcome in zip(specs, batched, strict=True):
                single = run_chain(spec)
                where = f"{strategy.label()}, replicate {spec.replicate}"
                if single.status == FAILED:
                    raise CheckFailed(f"{where}: the per-run path failed: {single.error}")
                if (outcome.status, outcome.error, outcome.degenerate_generation) != (
                    single.status,
                    single.error,
                    single.degenerate_generation,
                ):
                    raise CheckFailed(
                        f"{where}: batched status {outcome.status} ({outcome.error}), "
                        f"per-run {single.status} ({single.error})"
                    )
                rows, expected = _long_rows(outcome), _long_rows(single)
                if rows.keys() != expected.keys():
                    raise CheckFailed(f"{where}: the batched path records other metrics")
                for key, value in expected.items():
                    if not _close(rows[key], value):
                        raise CheckFailed(
                            f"{where}: {key[1]} at generation {key[0]} is {rows[key]!r} "
                            f"batched, {value!r} per run"
                        )
                if not _close(outcome.examples, single.examples):
                    raise CheckFailed(f"{where}: the batched path keeps other examples")
                if outcome.provenance != single.provenance:
                    raise CheckFailed(f"{where}: the batched path records other provenance")
                checked += 1
    return f"{checked} batched runs equal the per-run path (rtol {RTOL:g})"


def _long_rows(outcome: Any) -> dict[tuple[int, str], float]:
    """{(generation, metric): value} of a RunOutcome."""
    return {(g, m): v for g, m, v in outcome.metric_rows()}


def _spec(params: FamilyParams, strategy: StrategyParams, replicate: int) -> RunSpec:
    """A RunSpec of the batched check's tiny grid."""
    from collapselab.config import RunSpec

    fields = {
        "study": "check-family",
        "seed": DATA_SEED,
        "generations": BATCH_GENERATIONS,
        "n": BATCH_POINTS,
        "test_size": BATCH_POINTS,
        "model": params,
        "strategy": strategy,
        "replicate": replicate,
    }
    return RunSpec.model_validate(fields)


@contextmanager
def _registered(cls: type[ModelFamily]) -> Iterator[None]:
    """`cls` findable by its name while the engine runs it (a class checked before any study
    named it is not registered); the registry is left as it was."""
    taken = FAMILIES.get(cls.name)
    if taken is cls:
        yield
        return
    if taken is not None:
        raise CheckFailed(f"another family is registered as {cls.name!r}: rename this one")
    FAMILIES[cls.name] = cls
    try:
        yield
    finally:
        del FAMILIES[cls.name]


def _memory_estimate(subject: _Subject) -> str:
    cls, params, train, test = subject.cls, subject.params, subject.train, subject.test

    def one_generation() -> None:
        model = cls(params, context=RunContext(r0=train))
        model.fit(train)
        model.sample(POINTS, rng=_rng(SAMPLE_SEED))
        model.metrics(test, rng=_rng(METRIC_SEED))

    one_generation()  # libraries import and caches fill once a process: not a fit's memory
    estimate = cls.working_bytes(params, train_points=POINTS, n=POINTS, test_size=TEST_POINTS)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        one_generation()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    if peak > estimate:
        raise CheckFailed(
            f"fit, sample and metrics on {POINTS} points allocated {peak:,} bytes, above "
            f"working_bytes' estimate {estimate:,}: raise the estimate"
        )
    return f"peak {peak:,} bytes within the estimate {estimate:,} ({peak / estimate:.0%})"


CHECKS: tuple[Check, ...] = (
    Check(
        "fit-returns-model",
        "fit(X) returns the model itself and sets its fitted state",
        _fit_returns_model,
    ),
    Check(
        "given-generator",
        "sampling draws only from the Generator passed in; the global random state is untouched",
        _only_given_generator,
    ),
    Check(
        "shapes-and-dtypes",
        "sample(n) has n points of the real data's shape and dtype kind",
        _shapes_and_dtypes,
    ),
    Check("determinism", "two fresh models on the same data and seeds agree exactly", _determinism),
    Check(
        "metric-metadata", "every metric, indicator and example kind is described", _metric_metadata
    ),
    Check(
        "examples-json",
        "examples serialise to JSON with finite numbers, in their kind's format",
        _examples_json,
    ),
    Check(
        "parameters-validated",
        "unknown fields and wrong types are rejected by Params",
        _parameters_validated,
    ),
    Check(
        "degenerate-fit",
        "a constant training set raises Degenerate or fits finitely",
        _degenerate_fit,
    ),
    Check("batched-path", "the batched path gives the per-run numbers", _batched_equals_per_run),
    Check(
        "memory-estimate", "working_bytes bounds a small generation's allocations", _memory_estimate
    ),
)
CHECK_NAMES: tuple[str, ...] = tuple(check.name for check in CHECKS)


def iter_checks(
    cls: type[ModelFamily], *, params: Mapping[str, Any] | FamilyParams | None = None
) -> Iterator[tuple[Check, Callable[[], CheckResult]]]:
    """Each check with a call that runs it on `cls` (the data is loaded once, on first use)."""
    subject = _Subject(cls, family_params(cls, params))
    for check in CHECKS:
        yield check, partial(_run_one, check, subject)


def check_family(
    cls: type[ModelFamily], *, params: Mapping[str, Any] | FamilyParams | None = None
) -> list[CheckResult]:
    """Every check of the contract on `cls` (default parameters, or `params`), in order.
    Raises ValueError (one line) only when `params` are not valid parameters of `cls`."""
    return [run() for _, run in iter_checks(cls, params=params)]
